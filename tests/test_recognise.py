"""Weights known by their content (model/recognise.py): the convention from metadata, a known file or first
layer, or the first layer's statistics, never the name; the peers' key layouts; --non-strict."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from styleengine.errors import WeightsError
from styleengine.model import recognise
from styleengine.model.vgg import layer_table
from styleengine.model.weights import CAFFE, TORCHVISION, load_weights, random_state

CAFFE_META = {"channel_order": "BGR", "pixel_range": "0-255", "mean": "103.939,116.779,123.68", "std": "1,1,1"}
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def with_first_layer_rms(state: dict, rms: float) -> dict:
    """Random weights whose conv1_1 has this RMS (what a trained or folded file's first layer measures)."""
    out = dict(state)
    w = out["features.0.weight"]
    out["features.0.weight"] = w * (rms / float(w.pow(2).mean().sqrt()))
    return out


def folded_for_torchvision(caffe_w: torch.Tensor) -> torch.Tensor:
    """A caffe first layer re-expressed for torchvision's inputs: RGB order, x 255 x std per channel."""
    return caffe_w.flip(1) * 255 * IMAGENET_STD.view(1, 3, 1, 1)


def test_shared_file_metadata_then_known_first_layer(tmp_path, shared_vgg16_file):
    w = load_weights("vgg16", str(shared_vgg16_file))
    assert (w.convention, w.convention_source) == (CAFFE, "from metadata")
    assert w.describe() == f"weights: {shared_vgg16_file}: caffe convention (BGR, 0-255) from metadata"
    stripped = tmp_path / "stripped.safetensors"
    state = load_file(str(shared_vgg16_file))
    save_file(state, str(stripped))  # no metadata
    renamed = tmp_path / "vgg16-renamed.safetensors"
    shutil.copy(stripped, renamed)
    (tmp_path / "link.safetensors").symlink_to(stripped)
    as_pth = tmp_path / "copy.pth"  # another format, layer-named keys: the same first layer
    names = {layer.index: layer.name for layer in layer_table("vgg16")}
    torch.save({f"{names[int(k.split('.')[1])]}.{k.split('.')[2]}": v for k, v in state.items()}, as_pth)
    for path in (stripped, renamed, tmp_path / "link.safetensors", as_pth):
        got = load_weights("vgg16", str(path))
        assert (got.convention, got.convention_source) == (CAFFE, "from known hash"), path
        assert got.describe() == f"weights: {path}: caffe convention (BGR, 0-255) from known hash"


def test_first_layer_statistics_of_the_real_file(shared_vgg16_file):
    """The figures in recognise.py's docstring: trained caffe 0.207, folded for torchvision 11.9 (x57.6)."""
    w = load_file(str(shared_vgg16_file))["features.0.weight"]
    caffe = recognise.first_layer_rms({"features.0.weight": w})
    folded = recognise.first_layer_rms({"features.0.weight": folded_for_torchvision(w)})
    assert caffe == pytest.approx(0.207, abs=0.001) and folded == pytest.approx(11.9, abs=0.05)
    assert folded / caffe == pytest.approx(recognise.FOLD_FACTOR, rel=0.01)
    # the folded real first layer (metadata gone, so no known hash either) is read as torchvision's
    found = recognise.from_statistics({"features.0.weight": folded_for_torchvision(w)})
    assert (found.name, found.source) == ("torchvision", "first-layer statistics")


@pytest.mark.parametrize("rms,expected", [(0.207, None), (0.30, None), (0.27, None),  # trained files, Kaiming
                                          (0.207 * 57.6, "torchvision"),  # caffe folded for torchvision inputs
                                          (0.30 / 57.6, "caffe")])  # torchvision folded for caffe inputs
def test_statistics_on_realistic_random_files(tmp_path, rms, expected):
    path = tmp_path / "w.pth"
    torch.save(with_first_layer_rms(random_state("vgg16", 3), rms), path)
    w = load_weights("vgg16", str(path))
    if expected is None:  # the statistics cannot tell: torchvision's assumed, and the line says so
        assert w.convention == TORCHVISION and w.convention_source.startswith("assumed")
        assert f"conv1_1 weight RMS {rms:.3g}" in w.describe()
    else:
        assert w.convention == {"caffe": CAFFE, "torchvision": TORCHVISION}[expected]
        assert w.convention_source == "from first-layer statistics"
        assert w.describe().endswith("from first-layer statistics")


@pytest.mark.parametrize("model", ["vgg19", "vgg16"])
def test_neural_style_pt_vgg_layout(tmp_path, model):
    """Their .pth: torchvision's features.N keys plus classifier.0/3/6 (shapes cut down: only the keys
    matter); their layer-named keys read the same."""
    state = random_state(model, 1)
    full = {**state, **{f"classifier.{i}.{p}": torch.ones(4, 4) for i in (0, 3, 6) for p in ("weight", "bias")}}
    torch.save(full, tmp_path / "caffe.pth")
    w = load_weights(model, str(tmp_path / "caffe.pth"))
    assert all(torch.equal(w.state[k], v) for k, v in state.items())
    assert w.ignored == tuple(sorted(k for k in full if k.startswith("classifier")))
    assert "; ignored 6 keys: classifier.0.bias, " in w.describe()
    names = {layer.index: layer.name for layer in layer_table(model)}
    torch.save({f"{names[int(k.split('.')[1])]}.{k.split('.')[2]}": v for k, v in state.items()},
               tmp_path / "named.pth")
    named = load_weights(model, str(tmp_path / "named.pth"))
    assert named.state.keys() == w.state.keys() and all(torch.equal(named.state[k], v) for k, v in state.items())
    assert named.ignored == ()


def test_nin_is_recognised_and_refused_in_one_line(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for _, index, cin, cout, k, _, _ in recognise.NIN_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.01
        state[f"features.{index}.bias"] = torch.zeros(cout)
    torch.save(state, tmp_path / "nin_imagenet.pth")
    with pytest.raises(WeightsError, match="neural-style-pt's NIN") as info:
        load_weights("vgg19", str(tmp_path / "nin_imagenet.pth"))
    assert "\n" not in str(info.value)
    del state["features.26.weight"]  # not every NIN layer: not called NIN
    assert not recognise.is_nin(state)


def test_non_strict_lists_what_it_ignored(tmp_path):
    state = {**random_state("vgg16", 0), "features.31.weight": torch.ones(3), "features.x.scale": torch.ones(1)}
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"unexpected key features\.31\.weight.*--non-strict"):
        load_weights("vgg16", str(tmp_path / "w.pth"))
    w = load_weights("vgg16", str(tmp_path / "w.pth"), strict=False)
    assert w.ignored == ("features.31.weight", "features.x.scale")
    assert w.describe().endswith("; ignored 2 keys: features.31.weight, features.x.scale")
    with pytest.raises(WeightsError, match="has shape"):  # shapes are checked either way
        bad = dict(state, **{"features.0.weight": torch.ones(64, 3, 5, 5)})
        torch.save(bad, tmp_path / "bad.pth")
        load_weights("vgg16", str(tmp_path / "bad.pth"), strict=False)


def test_run_prints_the_weights_line_and_takes_non_strict(tmp_path, monkeypatch, capsys):
    import sys

    import numpy as np
    from PIL import Image

    from styleengine import cli

    rng = np.random.default_rng(0)
    for name in ("content", "style"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    state = {**random_state("vgg16", 0), "features.31.weight": torch.ones(3)}
    torch.save(state, tmp_path / "w.pth")

    def run(*flags: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["styleengine", "run", str(tmp_path / "content.png"),
                                          str(tmp_path / "style.png"), "-o", str(tmp_path / "out.png"),
                                          "--weights", str(tmp_path / "w.pth"), "--model", "vgg16", "--size", "32",
                                          "--iters", "2", "--device", "cpu", "--backend", "torch", *flags])
        try:
            cli.main()
        except SystemExit as e:
            return int(e.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().err

    code, err = run()
    assert code == 1 and "--non-strict ignores it" in err and not (tmp_path / "out.png").exists()
    code, err = run("--non-strict")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("weights: ")]
    assert lines == [f"weights: {tmp_path / 'w.pth'}: torchvision convention (RGB, 0-1, ImageNet mean/std) "
                     f"assumed: no metadata, not a known file, and conv1_1 weight RMS 0.279: trained files of both "
                     f"conventions sit at 0.207-0.3; --channel-order/--pixel-range/--mean/--std set it; "
                     f"ignored 1 key: features.31.weight"]


def test_flags_over_the_file_say_both(shared_vgg16_file):
    from styleengine.engine.stylise import Settings, load_run_weights

    w = load_run_weights(Settings(model="vgg16", weights=str(shared_vgg16_file), channel_order="RGB"))
    assert w.convention.channel_order == "RGB" and w.convention.pixel_range == 255
    assert w.describe() == (f"weights: {shared_vgg16_file}: RGB, 0-255, mean 103.939,116.779,123.68, std 1,1,1 "
                            f"from flags (over its caffe convention (BGR, 0-255) from metadata)")


def test_non_strict_leaves_a_batch_job_s_hash_alone(tmp_path):
    """--non-strict changes which keys are read, not the picture: a batch resumed with it skips what is done."""
    import dataclasses

    from styleengine.engine.batch import Job, settings_hash
    from styleengine.engine.stylise import Settings

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(name.encode())
    job = Job("a", tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "out.png")
    base = Settings(weights="random")
    assert settings_hash(job, base, {}) == settings_hash(job, dataclasses.replace(base, non_strict=True), {})
    assert settings_hash(job, base, {}) != settings_hash(job, dataclasses.replace(base, size=64), {})
