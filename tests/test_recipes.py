"""Recipes that carry over from neural-style / neural-style-pt (issue 24, items 2 and 3): gradient and weight
normalisation, the TV weight's scale, the neural-style-pt preset, the saturation warning, the peers' spellings."""
from __future__ import annotations

import pytest
import torch

from styleengine.engine import capability
from styleengine.engine.autotune import choose
from styleengine.engine.losses import LossConfig, Targets, content_scales, gram, total_loss
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError
from styleengine.model.convention import CAFFE, TORCHVISION

CPU_ONLY = capability.Machine(cuda=False, ort_providers=("cpu",))
FAST_API = dict(weights="random", model="vgg16", device="cpu", backend="torch", precision="fp32", conv="direct")
LAYERS = {"content_layers": ("relu2_1",), "style_layers": ("relu1_1", "relu2_1")}


def _features(seed: int = 0) -> tuple[dict[str, torch.Tensor], Targets]:
    g = torch.Generator().manual_seed(seed)
    feats = {"relu1_1": torch.rand(1, 64, 12, 10, generator=g), "relu2_1": torch.rand(1, 128, 6, 5, generator=g)}
    targets = Targets(content={"relu2_1": torch.rand(1, 128, 6, 5, generator=g)},
                      grams={n: gram(torch.rand(f.shape, generator=g)) for n, f in feats.items()})
    return feats, targets


def _layer_grads(config: LossConfig, term: str) -> tuple[float, dict[str, torch.Tensor]]:
    feats, targets = _features()
    leaves = {n: f.clone().requires_grad_(True) for n, f in feats.items()}
    terms = total_loss(config, leaves, targets, torch.rand(1, 3, 24, 20))
    terms[term].backward()
    return terms[term].item(), {n: f.grad for n, f in leaves.items()}


@pytest.mark.parametrize("term, strengths", [
    ("content", {"relu2_1": 3.0}),
    ("style", {"relu1_1": 0.7 * 0.25, "relu2_1": 0.7 * 0.75}),
])
def test_normalize_gradients_gives_each_term_the_l1_norm_of_its_weight(term, strengths):
    """neural-style's -normalize_gradients: a term's gradient at its layer has L1 norm alpha (beta w_l); its
    value is the plain loss's."""
    config = LossConfig(**LAYERS, content_weight=3.0, style_weight=0.7, style_layer_weights=(0.25, 0.75))
    plain_value, plain = _layer_grads(config, term)
    value, grads = _layer_grads(LossConfig(**{**config.__dict__, "normalize_gradients": True}), term)
    assert value == pytest.approx(plain_value, rel=1e-6)
    for name, strength in strengths.items():
        assert grads[name].abs().sum().item() == pytest.approx(strength, rel=1e-4)
        # the direction is the plain gradient's
        cos = torch.nn.functional.cosine_similarity(grads[name].flatten(), plain[name].flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-5)
        assert plain[name].abs().sum().item() != pytest.approx(strength, rel=1e-2)


def test_normalize_weights_divides_each_layer_by_its_channels():
    """neural-style-pt's -normalize_weights: strength / max(target.size()): C_l for a Gram (C, C); for the
    content target (1, C, h, w) its largest side."""
    config = LossConfig(**LAYERS, style_layer_weights=(2.0, 4.0), normalize_weights=True)
    assert config.layer_weights() == pytest.approx((2.0 / 64, 4.0 / 128))
    assert LossConfig(**LAYERS, normalize_weights=True).layer_weights() == pytest.approx((0.5 / 64, 0.5 / 128))
    _, targets = _features()
    plain = content_scales(LossConfig(**LAYERS), targets)
    assert content_scales(config, targets)["relu2_1"] == pytest.approx(plain["relu2_1"] / 128)
    wide = Targets(content={"relu1_1": torch.rand(1, 64, 80, 70)})
    one = LossConfig(content_layers=("relu1_1",), style_layers=(), normalize_weights=True, weighting="paper")
    assert content_scales(one, wide)["relu1_1"] == pytest.approx(1 / 80)


@pytest.mark.parametrize("backend", ["ort", "tensorrt"])
def test_normalize_gradients_names_the_backend_that_serves_it(backend):
    why = capability.refusal(backend, "cuda", "auto", "auto", torch_only=capability.NORMALIZE_GRADIENTS)
    assert why is not None and "torch backend" in why and "\n" not in why
    with pytest.raises(ConfigError, match="torch backend"):
        Settings(backend=backend, normalize_gradients=True).validate()
    assert capability.refusal("torch", "cpu", "auto", "auto", torch_only=capability.NORMALIZE_GRADIENTS) is None


def test_auto_picks_torch_for_normalize_gradients():
    assert {c[0] for c in capability.candidates("auto", "cpu", "auto", "auto")} == {"torch", "ort"}
    options = capability.candidates("auto", "cpu", "auto", "auto", torch_only=capability.NORMALIZE_GRADIENTS)
    assert {c[0] for c in options} == {"torch"}
    chosen = choose(Settings(normalize_gradients=True, device="cpu"), machine=CPU_ONLY, tune=False).settings
    assert chosen.backend == "torch"


@pytest.mark.parametrize("extra", [{"tile": 64}, {"mem_budget_gib": 1.0}])
def test_normalize_gradients_refuses_the_tiled_step(extra):
    with pytest.raises(ConfigError, match="tiled step"):
        Settings(normalize_gradients=True, **extra).validate()



# ---- --tv-weight's scale

def test_tv_weight_is_in_units_where_one_is_visible():
    """tv_weight 1 is TV_UNIT (1e5) times the mean squared neighbour difference: next to the content and style
    terms on caffe-scale features (the measurement in engine/loss_config.py), not 1e-5 of them."""
    from styleengine.engine.losses import TV_UNIT, tv_scale

    image = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    feats, targets = _features()
    terms = total_loss(LossConfig(**LAYERS, tv_weight=1.0), feats, targets, image)
    squared = ((image[:, :, 1:] - image[:, :, :-1]) ** 2).sum() + ((image[..., 1:] - image[..., :-1]) ** 2).sum()
    assert TV_UNIT == 1e5
    assert terms["tv"].item() == pytest.approx(1e5 * squared.item() / (3 * 24 * 20), rel=1e-5)
    assert tv_scale(LossConfig(weighting="paper"), 24, 20) == 1e5


def test_an_inversion_keeps_its_prior_weight():
    """invert's --tv-weight weighs its normalised feature term, as before the TV unit: its run divides it out."""
    from styleengine.engine.invert import invert
    from styleengine.engine.losses import TV_UNIT

    picture = torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(2)).numpy()
    _, _, ran = invert(picture, "conv1_2", Settings(size=40, iterations=2, init="noise", tv_weight=0.5, **FAST_API))
    assert ran.tv_weight == pytest.approx(0.5 / TV_UNIT)


# ---- the CLI: bad values are one line before any work; the flags run end to end

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import FAST, assert_one_line_error, pics, run_cli  # noqa: F401  (pics: a fixture)
except ModuleNotFoundError:
    from tests.test_cli import FAST, assert_one_line_error, pics, run_cli  # noqa: F401


def test_cli_normalize_gradients_on_ort_is_one_line(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--backend", "ort", "--normalize-gradients")
    assert_one_line_error(code, err, out)
    assert "torch backend" in err


def test_cli_normalize_flags_run(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--backend", "torch", "--normalize-gradients", "--normalize-weights")
    assert code == 0, err
    assert out.exists()


# ---- --recipe neural-style-pt

def test_the_recipe_is_neural_style_pts_loss_in_our_units():
    """Their content a * mean (F - P)^2 and style b * mean (G/(N M) - A/(N M))^2 per layer, written from their
    definitions, equal our terms under the mapped weights."""
    from styleengine.engine.recipes import NEURAL_STYLE_PT, recipe_values

    values = recipe_values(NEURAL_STYLE_PT, {"content_weight": 3.0, "style_weight": 70.0, **LAYERS})
    config = Settings(**values).loss_config()
    feats, targets = _features()
    ours = total_loss(config, feats, targets, torch.rand(1, 3, 24, 20))
    p = targets.content["relu2_1"]
    content = 3.0 * torch.mean((feats["relu2_1"] - p) ** 2)
    style = sum(70.0 * torch.mean((gram(f) / f.numel() - targets.grams[n] / f.numel()) ** 2) for n, f in feats.items())
    assert ours["content"].item() == pytest.approx(content.item(), rel=1e-5)
    assert ours["style"].item() == pytest.approx(style.item(), rel=1e-5)


def test_the_recipe_sets_their_defaults_and_named_flags_win(monkeypatch, capsys, pics, tmp_path):
    seen = {}
    monkeypatch.setattr("styleengine.cli_job.execute", lambda **kw: seen.update(kw))
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", tmp_path / "o.png",
                           "--recipe", "neural-style-pt", "--iters", "7", "--style-weight", "200", "--seed", "3")
    assert code == 0, err
    s = seen["settings"]
    assert (s.iterations, s.seed, s.pooling, s.init, s.size, s.scales, s.lbfgs_max_step) == (7, 3, "max", "randn",
                                                                                              512, 1, 0.0)
    assert (s.content_weight, s.style_weight) == (10.0, 800.0)  # 5 and 200 in neural-style-pt's units
    assert s.style_layer_weights == pytest.approx(tuple(1 / c**2 for c in (64, 128, 256, 512, 512)))
    seen.clear()
    run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", tmp_path / "o.png", "--iters", "7")
    assert (seen["settings"].pooling, seen["settings"].style_weight) == ("avg", Settings().style_weight)


def test_an_unknown_recipe_is_one_line(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--recipe", "neural-style")
    assert_one_line_error(code, err, out)
    assert "neural-style-pt" in err


# ---- Adam's learning rate saturating the image

def test_a_saturating_learning_rate_is_one_warning_line_naming_the_flag(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST[:-4],
                           "--iters", "12", "--device", "cpu", "--optimizer", "adam", "--lr", "1")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: Adam's learning rate 1 saturates")]
    assert len(lines) == 1 and "lower --lr" in lines[0], err
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST[:-4],
                           "--iters", "12", "--device", "cpu", "--optimizer", "adam")
    assert code == 0 and "saturates" not in err, err


def test_the_saturation_share_counts_values_outside_0_1(caplog):
    from styleengine.engine.loop import warn_if_saturated

    x = torch.full((1, 3, 4, 4), 0.5)
    assert warn_if_saturated(x, 0.02, 10) == 0 and not caplog.records
    x[:, :2] = 3.0
    assert warn_if_saturated(x, 1.0, 10) == pytest.approx(2 / 3)
    assert "lower --lr" in caplog.records[-1].getMessage()


# ---- the peers' spellings

def test_style_lists_and_folders_are_several_styles(monkeypatch, capsys, pics, tmp_path):
    from PIL import Image

    folder = tmp_path / "styles"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.new("RGB", (40, 40)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    comma = tmp_path / "x,y.png"
    Image.new("RGB", (40, 40)).save(comma)
    seen = {}
    monkeypatch.setattr("styleengine.cli_job.execute", lambda **kw: seen.update(kw))
    for args, want in (([f"{pics['style']},{pics['style2']}"], [pics["style"], pics["style2"]]),
                       ([folder], [folder / "a.jpg", folder / "b.png"]),
                       ([comma, folder], [comma, folder / "a.jpg", folder / "b.png"])):
        code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], *args, "-o", tmp_path / "o.png")
        assert code == 0, err
        assert seen["styles"] == want
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "texture", empty, "-o", tmp_path / "o.png")
    assert_one_line_error(code, err, tmp_path / "o.png")
    assert "holds no images" in err


def test_a_jobs_file_takes_a_style_folder(tmp_path):
    from PIL import Image

    from styleengine.engine.jobs import load_jobs

    (tmp_path / "styles").mkdir()
    for name in ("s1.png", "s2.png"):
        Image.new("RGB", (40, 40)).save(tmp_path / "styles" / name)
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text('{"content": "c.png", "styles": "styles"}\n')
    (job,) = load_jobs(jobs_file, tmp_path / "out")
    assert job.styles == (tmp_path / "styles" / "s1.png", tmp_path / "styles" / "s2.png")
    assert job.output.name == "c__styles.png"


@pytest.mark.parametrize("spelling, ours", [("random", "noise"), ("image", "content"), ("style", "style")])
def test_init_random_and_image_are_noise_and_content(spelling, ours):
    assert Settings(init=spelling).init == ours


def test_print_every_logs_a_line_every_n_iterations(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--iters", "4", "--print-every", "2", "--init", "random")
    assert code == 0, err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("iteration ")] == \
        ["iteration 2 / 4", "iteration 4 / 4"]


@pytest.mark.parametrize("convention", [CAFFE, TORCHVISION])
def test_randn_is_neural_style_pts_start(convention):
    """Their -init random: y = randn * 0.001 as the network's input (torch's global stream, seeded), here
    mapped back to RGB [0, 1]: a flat grey at the convention's mean pixel."""
    from styleengine.engine.stylise import Prepared, make_init

    start = make_init(Settings(init="randn", seed=3), Prepared(None, [], 12, 10), convention=convention)
    torch.manual_seed(3)
    y = torch.randn(1, 3, 12, 10) * 0.001
    scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in convention.scale_shift())
    network = start * scale + shift  # RGB order: the network's channel i is RGB channel perm[i]
    torch.testing.assert_close(network[:, convention.rgb_permutation()], y, rtol=0, atol=1e-4)
    mean = torch.tensor(convention.mean)[convention.rgb_permutation()] / convention.pixel_range
    torch.testing.assert_close(start.mean(dim=(0, 2, 3)), mean.float(), rtol=0, atol=1e-3)
    assert start.std(dim=(0, 2, 3)).max() < 0.01


def test_a_mistyped_init_names_the_starts(monkeypatch, capsys, pics, tmp_path):
    out = tmp_path / "o.png"
    monkeypatch.setattr("styleengine.cli_job.load_run_weights", lambda *a: pytest.fail("work started"))
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--init", "randm")
    assert_one_line_error(code, err, out)
    assert "randm" in err and "randn" in err and "noise" in err


@pytest.mark.parametrize("flags, match", [(["--print-every", "-1"], "print-every"),
                                          (["--print-every", "x"], "print-every")])
def test_bad_new_flag_values_are_one_line_before_any_work(monkeypatch, capsys, pics, tmp_path, flags, match):
    out = tmp_path / "o.png"
    monkeypatch.setattr("styleengine.cli_job.load_run_weights", lambda *a: pytest.fail("work started"))
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST, *flags)
    assert_one_line_error(code, err, out)
    assert match in err


@pytest.mark.parametrize("args, ours", [
    (["-style_image", "s.png", "-content_image", "c.png"], "STYLE arguments"),
    (["c.png", "s.png", "-o", "o.png", "-num_iterations", "5"], "--iters"),
    (["c.png", "s.png", "-o", "o.png", "-print_iter=5"], "--print-every"),
    (["c.png", "s.png", "-o", "o.png", "-init", "random"], "--init"),
])
def test_neural_styles_single_dash_flags_name_ours(monkeypatch, capsys, args, ours, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "run", *args)
    assert_one_line_error(code, err, tmp_path / "o.png")
    assert "neural-style's flag" in err and ours in err


def test_an_unknown_single_dash_flag_keeps_clicks_message(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", "o.png", "-x")
    assert_one_line_error(code, err, tmp_path / "o.png")
    assert "No such option: -x" in err


def test_the_readme_table_lists_every_peer_flag():
    from pathlib import Path

    from styleengine.peers import FLAGS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Coming from neural-style"):readme.index("## Example")]
    for name, ours in FLAGS.items():
        assert f"| `{name}` | {ours} |" in section


def test_the_api_and_the_server_take_a_recipe_as_the_run_does(monkeypatch, capsys, pics, tmp_path):
    """`stylise(..., recipe="neural-style-pt")` and serve's `recipe` field set what `run --recipe` sets (they took
    no recipe: stop 36's left-out); the weights given are in its units and said by the name given."""
    pytest.importorskip("fastapi")
    from styleengine.api import settings_of
    from styleengine.serve.app import Config, _settings

    seen = {}
    monkeypatch.setattr("styleengine.cli_job.execute", lambda **kw: seen.update(kw))
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", tmp_path / "o.png",
                           "--recipe", "neural-style-pt", "--iters", "7", "--style-weight", "200")
    assert code == 0, err
    ran = seen["settings"]
    given = {"iterations": 7, "style_weight": 200.0}
    assert settings_of(given, "neural-style-pt") == ran
    served = _settings(Settings().resolved(), dict(given), Config(max_size=512, max_iters=50), "neural-style-pt")
    assert (served.style_weight, served.pooling, served.init, served.size) == (800.0, "max", "randn", 512)
    with pytest.raises(ConfigError, match=r"^tv_weight 3e\+38 \(in neural-style-pt's units\)"):
        settings_of({"tv_weight": 3e38}, "neural-style-pt")
    with pytest.raises(ConfigError, match="neural-style-pt"):
        settings_of({}, "neural-style")


def test_a_recipe_runs_through_the_api(pics):
    import styleengine

    image = styleengine.stylise(pics["content"], pics["style"], recipe="neural-style-pt", size=40, iterations=2,
                                **FAST_API)
    assert max(image.size) == 40
