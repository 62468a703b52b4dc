"""Weight sources, key/shape checks, safe loading and the input convention."""
from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from styleengine.errors import WeightsError
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import TorchStep
from styleengine.model import weights as weights_mod
from styleengine.model.weights import (
    CAFFE,
    RANDOM,
    TORCHVISION,
    Convention,
    check_state,
    convention_from_metadata,
    load_weights,
    random_state,
)

CAFFE_META = {"channel_order": "BGR", "pixel_range": "0-255", "mean": "103.939,116.779,123.68", "std": "1,1,1"}


# --- key and shape checks


def test_vgg16_state_as_vgg19_names_the_key(vgg16_random):
    with pytest.raises(WeightsError, match=r"features\.16\.weight \(conv3_4\)") as info:
        check_state("vgg19", vgg16_random.state, "ckpt.pth")
    assert "ckpt.pth" in str(info.value) and "\n" not in str(info.value)


def test_vgg19_state_as_vgg16_names_the_key(vgg19_random):
    # vgg16's conv4_1 sits at features.17, a ReLU in vgg19
    with pytest.raises(WeightsError, match=r"features\.17\.weight \(conv4_1\)"):
        check_state("vgg16", vgg19_random.state, "ckpt.pth")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_wrong_architecture_file(tmp_path, vgg16_random, vgg19_random, suffix):
    for state, model in [(vgg16_random.state, "vgg19"), (vgg19_random.state, "vgg16")]:
        path = tmp_path / f"w{suffix}"
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
        with pytest.raises(WeightsError, match=r"features\.1[67]\.weight"):
            load_weights(model, str(path))


def test_missing_key_is_named(vgg19_random):
    state = dict(vgg19_random.state)
    del state["features.10.bias"]
    with pytest.raises(WeightsError, match=r"missing key features\.10\.bias \(conv3_1\)"):
        check_state("vgg19", state, "x")


def test_wrong_shape_is_named(vgg19_random):
    state = dict(vgg19_random.state)
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    with pytest.raises(WeightsError, match=r"features\.5\.weight \(conv2_1\) has shape \(128, 32, 3, 3\)") as info:
        check_state("vgg19", state, "x")
    assert "(128, 64, 3, 3)" in str(info.value)


def test_deeper_network_is_refused(vgg16_random):
    state = dict(vgg16_random.state)
    state["features.31.weight"] = torch.zeros(512, 512, 3, 3)
    with pytest.raises(WeightsError, match=r"unexpected key features\.31\.weight"):
        check_state("vgg16", state, "x")


def test_check_state_keeps_conv_keys_as_fp32(vgg19_random):
    state = {k: v.double() for k, v in vgg19_random.state.items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's full checkpoint has these
    out = check_state("vgg19", state, "x")
    assert set(out) == set(vgg19_random.state)
    assert all(v.dtype == torch.float32 for v in out.values())
    torch.testing.assert_close(out["features.0.weight"], vgg19_random.state["features.0.weight"], rtol=0, atol=0)


# --- .pth


def test_pth_roundtrip_and_state_dict_wrapper(tmp_path, vgg16_random):
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(vgg16_random.state, plain)
    torch.save({"state_dict": vgg16_random.state, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        w = load_weights("vgg16", str(path))
        assert w.source == str(path)
        for k, v in vgg16_random.state.items():
            assert torch.equal(w.state[k], v), k
        assert w.convention == TORCHVISION  # no metadata, unknown hash: torchvision-style
        assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)  # harmless: proves whether the pickle's code ran
    return tag


class NeedsCode:
    """A harmless object whose unpickling calls a function of this module."""

    def __reduce__(self):
        return (_record_unpickling, ("ran",))


@pytest.mark.parametrize("zipfmt", [True, False])
def test_pickle_needing_code_is_refused(tmp_path, vgg16_random, zipfmt):
    path = tmp_path / "evil.pth"
    state = dict(vgg16_random.state)
    state["extra"] = NeedsCode()
    torch.save(state, path, _use_new_zipfile_serialization=zipfmt)
    UNPICKLED.clear()
    with pytest.raises(WeightsError, match="needs code to unpickle") as info:
        load_weights("vgg16", str(path))
    assert UNPICKLED == []
    assert "\n" not in str(info.value) and "weights_only" in str(info.value)


def test_pth_load_uses_weights_only(tmp_path, monkeypatch, vgg16_random):
    path = tmp_path / "w.pth"
    torch.save(vgg16_random.state, path)
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_weights("vgg16", str(path))
    assert seen.get("weights_only") is True


def test_pth_of_non_tensors(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"features.0.weight": 3}, path)
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        load_weights("vgg16", str(path))


def test_garbage_pth_is_not_called_code(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="bad.pth is text, not a PyTorch checkpoint") as caught:
        load_weights("vgg16", str(path))
    assert "code" not in str(caught.value)


def test_truncated_pth(tmp_path, vgg16_random):
    path = tmp_path / "cut.pth"
    torch.save(vgg16_random.state, path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="a zip archive whose end is missing or damaged"):
        load_weights("vgg16", str(path))


# --- .safetensors


def test_safetensors_without_metadata(tmp_path, vgg19_random):
    path = tmp_path / "w.safetensors"
    save_file(vgg19_random.state, str(path))
    w = load_weights("vgg19", str(path))
    assert w.convention == TORCHVISION
    assert all(torch.equal(w.state[k], v) for k, v in vgg19_random.state.items())
    assert not w.is_random


def test_safetensors_metadata_convention(tmp_path, vgg16_random):
    path = tmp_path / "w.safetensors"
    save_file(vgg16_random.state, str(path), metadata=CAFFE_META)
    assert load_weights("vgg16", str(path)).convention == CAFFE
    # flags override the file
    assert load_weights("vgg16", str(path), convention=TORCHVISION).convention == TORCHVISION


def test_metadata_parsing():
    assert convention_from_metadata({}) is None
    assert convention_from_metadata(CAFFE_META) == CAFFE
    c = convention_from_metadata({"channel_order": "rgb", "pixel_range": "1", "mean": "0.5,0.4,0.3"})
    assert c == Convention("RGB", 1.0, (0.5, 0.4, 0.3), (1.0, 1.0, 1.0))
    with pytest.raises(WeightsError, match="unreadable input convention"):
        convention_from_metadata({"channel_order": "BGR", "mean": "a,b,c"})
    with pytest.raises(WeightsError, match="unreadable input convention"):
        convention_from_metadata({"channel_order": "BGR"})  # no mean


def test_file_name_does_not_set_the_convention(tmp_path, vgg19_random):
    # neural-style-pt's caffe VGG19 is called vgg19-d01eb7cb.pth, but its download script re-saves it, so the
    # name says nothing about these bytes: the same bytes under any name (or a link) read alike
    path = tmp_path / "vgg19-d01eb7cb.pth"
    torch.save(vgg19_random.state, path)
    (tmp_path / "link.pth").symlink_to(path)
    read = [load_weights("vgg19", str(p)) for p in (path, tmp_path / "link.pth")]
    assert {(w.convention, w.convention_source) for w in read} == {(TORCHVISION, read[0].convention_source)}
    assert read[0].convention_source.startswith("assumed")


@pytest.mark.parametrize("name,content,match", [("w.safetensors", b"\x00garbage", "cannot read safetensors"),
                                                ("w.npz", b"x", "unsupported weights file"),
                                                ("missing.pth", None, "not found")])
def test_bad_files(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_weights("vgg19", str(path))


def test_shared_vgg16_convention(vgg16_imagenet):
    c = vgg16_imagenet.convention
    assert c.channel_order == "BGR"
    assert c.pixel_range == 255.0
    assert c.mean == pytest.approx((103.939, 116.779, 123.68), abs=1e-9)
    assert c.std == (1.0, 1.0, 1.0)
    assert len(vgg16_imagenet.state) == 26
    assert vgg16_imagenet.state["features.28.weight"].shape == (512, 512, 3, 3)
    assert not vgg16_imagenet.is_random


# --- the convention's arithmetic


def test_scale_shift_known_conventions():
    scale, shift = TORCHVISION.scale_shift()
    assert scale == pytest.approx([1 / 0.229, 1 / 0.224, 1 / 0.225], rel=1e-12)
    assert shift == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-12)
    assert TORCHVISION.rgb_permutation() == [0, 1, 2]
    scale, shift = CAFFE.scale_shift()  # indexed by RGB colour: R gets mean 123.68, B gets 103.939
    assert scale == [255.0, 255.0, 255.0]
    assert shift == pytest.approx([-123.68, -116.779, -103.939], rel=1e-12)
    assert CAFFE.rgb_permutation() == [2, 1, 0]


ODD = Convention("BGR", 255.0, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0))  # every channel different


def _explicit_input(rgb: torch.Tensor, c: Convention) -> torch.Tensor:
    """network input channel i = (colour[order[i]] * range - mean[i]) / std[i]."""
    order = {"RGB": [0, 1, 2], "BGR": [2, 1, 0]}[c.channel_order]
    chans = [(rgb[:, order[i]] * c.pixel_range - c.mean[i]) / c.std[i] for i in range(3)]
    return torch.stack(chans, 1)


@pytest.mark.parametrize("convention", [TORCHVISION, CAFFE, RANDOM, ODD], ids=["torchvision", "caffe", "random", "odd"])
def test_torchstep_preprocessing_equals_formula(vgg16_random, make_image, convention):
    w = load_weights("vgg16", "random", seed=0, convention=convention)
    step = TorchStep(w, LossConfig(content_layers=("conv1_1",), style_layers=()))
    img = make_image(9, 11, seed=4)
    got = step.features(img, ["conv1_1"])["conv1_1"]
    want = F.conv2d(_explicit_input(img, convention), w.state["features.0.weight"], w.state["features.0.bias"],
                    padding=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * convention.pixel_range)


# --- imagenet via torch.hub, never the network


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's folder in tmp_path, and its download replaced: `hub.answer(url, dst, hash_prefix)` (a stand-in
    set by the test) writes the file or raises; the calls are kept."""
    class Hub:
        calls: list = []
        answer = None

    def download(url, dst, hash_prefix=None, progress=True):
        Hub.calls.append({"url": url, "hash_prefix": hash_prefix, "progress": progress})
        Hub.answer(url, dst, hash_prefix)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return Hub


def test_imagenet_offline_is_one_line_error(hub):
    def offline(url, dst, hash_prefix):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    hub.answer = offline
    with pytest.raises(WeightsError) as info:
        load_weights("vgg19", "imagenet")
    msg = str(info.value)
    assert "\n" not in msg
    assert "--weights" in msg and "vgg19" in msg
    assert [c["url"] for c in hub.calls] == [weights_mod.IMAGENET_URLS["vgg19"]]


def test_imagenet_hash_mismatch_is_weights_error(hub):
    def bad_hash(url, dst, hash_prefix):
        raise RuntimeError('invalid hash value (expected "dcbb9e9d", got "0000")\nmore')

    hub.answer = bad_hash
    with pytest.raises(WeightsError, match="invalid hash") as info:
        load_weights("vgg19", "imagenet")
    assert "\n" not in str(info.value)


def test_imagenet_checks_hash_and_convention_and_prints_nothing(hub, vgg16_random, capfd):
    """torch.hub's loader wrote "Downloading: ..." to stderr (library code never prints): the download is ours,
    with the checkpoint's hash prefix checked, quiet, loaded weights-only; a second load reads the cached file."""
    hub.answer = lambda url, dst, hash_prefix: torch.save(
        {**vgg16_random.state, "classifier.0.weight": torch.zeros(2, 2)}, dst)
    w = load_weights("vgg16", "imagenet")
    assert hub.calls == [{"url": weights_mod.IMAGENET_URLS["vgg16"], "hash_prefix": "397923af", "progress": False}]
    assert w.convention == TORCHVISION and w.source == "imagenet" and w.sha256 == "397923af"
    assert set(w.state) == set(vgg16_random.state)
    assert load_weights("vgg16", "imagenet").sha256 == "397923af" and len(hub.calls) == 1
    assert capfd.readouterr().err == ""


# --- random


def test_random_weights_seeded_and_deterministic():
    a, b = random_state("vgg16", 7), random_state("vgg16", 7)
    c = random_state("vgg16", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    wa, wc = load_weights("vgg16", "random", seed=7), load_weights("vgg16", "random", seed=8)
    assert wa.source == "random:7" and wa.is_random and wa.convention == RANDOM
    assert wa.sha256 == load_weights("vgg16", "random", seed=7).sha256 != wc.sha256


def test_random_weights_are_kaiming(vgg19_random):
    for key, v in vgg19_random.state.items():
        if key.endswith(".bias"):
            assert torch.count_nonzero(v) == 0
        else:
            fan_in = v.shape[1] * 9
            assert v.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.1), key
            assert abs(v.mean().item()) < 0.1 * (2.0 / fan_in) ** 0.5 + 1e-3


def test_unknown_model():
    with pytest.raises(ValueError, match="vgg11"):
        load_weights("vgg11", "random")
