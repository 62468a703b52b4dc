"""`styleengine batch --ray` on a local Ray cluster (2 CPUs, started once for this module): the same manifest
and outputs as the local run; a worker killed mid-job has its group run by another; nothing lost or twice."""
import signal

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from styleengine.engine import batch as engine  # noqa: E402
from styleengine.engine.batch_ray import RayRunner  # noqa: E402
from styleengine.engine.stylise import Settings  # noqa: E402

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_batch import FAST, by_id, folder, manifest  # noqa: F401 (folder is a fixture)
    from test_cli import run_cli
except ModuleNotFoundError:
    from tests.test_batch import FAST, by_id, folder, manifest  # noqa: F401
    from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def cluster():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for s, handler in saved.items():  # ray.init installs a SIGTERM handler and leaves it
        signal.signal(s, handler)


def test_ray_same_manifest_and_outputs_as_local(cluster, folder, monkeypatch, capsys):
    local, remote = folder / "local", folder / "ray"
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", local, *FAST)
    assert code == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", remote, *FAST,
                           "--ray", "auto")
    assert code == 1, err  # the bad image fails there too
    a, b = manifest(local), manifest(remote)
    assert len(a) == len(b) == 6
    a, b = by_id(a), by_id(b)
    assert set(a) == set(b)
    for job_id, line in a.items():
        other = b[job_id]
        for key in ("status", "reason", "settings_hash", "iterations", "batch", "device"):
            assert line[key] == other[key], (job_id, key)
        assert line["output"].replace(str(local), "") == other["output"].replace(str(remote), "")
        if line["status"] == "ok":
            assert line["losses"] == pytest.approx(other["losses"], rel=1e-5)
            x = np.asarray(Image.open(line["output"]), dtype=np.int16)
            y = np.asarray(Image.open(other["output"]), dtype=np.int16)
            assert np.abs(x - y).max() <= 1
    assert not list(remote.rglob(".*.tmp"))


def test_killed_worker_jobs_still_finish(cluster, folder):
    # six jobs, one at a time; the second is long, so its worker is still busy when the first comes back
    jobs = [engine.Job(f"j{i}", folder / "c1.png", (folder / "s1.png",), folder / "out" / f"j{i}.png",
                       (("iterations", 40 if i == 1 else 2),)) for i in range(6)]
    (folder / "out").mkdir()
    base = Settings(weights="random", model="vgg16", size=40, device="cpu")
    planned = engine.plan(jobs, base, None)
    runner = RayRunner("auto", batch_size=1, cpus_per_worker=1)
    assert len(runner.actors) == 2
    try:
        results = runner.run(planned)
        first = next(results)
        busy = [ref for ref in runner.in_flight if not ray.wait([ref], timeout=0)[0]]
        assert busy, "no job was running when the first came back"
        ray.kill(runner.in_flight[busy[0]][0])  # no restart: its group must go to the other worker
        finished = first + [result for group in results for result in group]
    finally:
        runner.close()
    assert runner.resubmitted == 1
    assert sorted(r.job.id for r in finished) == [f"j{i}" for i in range(6)]  # each once, none lost
    assert all(r.status == "ok" and r.image is not None for r in finished)
    assert {r.iterations for r in finished if r.job.id == "j1"} == {40}


def test_relative_paths_are_read_in_the_drivers_folder(cluster, tmp_path, monkeypatch, capsys):
    """A cluster started in another folder read a job's relative `photo.png` there: another picture, exit 0, the
    local run's hash (probe 25b). The actors work in the driver's folder, as the jobs file's paths say."""
    rng = np.random.default_rng(3)
    (tmp_path / "work").mkdir()
    for name in ("photo.png", "style.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "work" / name)
    (tmp_path / "work" / "jobs.jsonl").write_text('{"id": "x", "content": "photo.png", "style": "style.png"}\n')
    monkeypatch.chdir(tmp_path / "work")  # not where the cluster was started
    for out, ray_flags in (("local", []), ("ray", ["--ray", "auto"])):
        code, _, err = run_cli(monkeypatch, capsys, "batch", "jobs.jsonl", "--out", out, *FAST, *ray_flags)
        assert code == 0, err
    local, remote = (np.asarray(Image.open(tmp_path / "work" / out / "photo__style.png")) for out in ("local", "ray"))
    assert np.abs(local.astype(int) - remote.astype(int)).max() <= 1
    from styleengine.engine.batch_ray import enter

    assert enter(str(tmp_path / "nowhere")).startswith("the Ray worker on ")
