"""The step lifecycle, the same for every step kind: build -> set_targets -> call -> trim -> close.

Calling without targets (after build, trim or set_loss) or anything but close after close is a bug in
the caller: StepStateError (a RuntimeError) with a message that says what to do. TrtStep's run of the
same checks is in tests/test_trt.py (it needs the fake tensorrt there).
"""
from __future__ import annotations

import pytest
import torch

from styleengine.engine.graph_io import GraphIO
from styleengine.engine.losses import TV_UNIT, LossConfig
from styleengine.engine.ort_step import make_graph_step
from styleengine.engine.steps import StepStateError, TorchStep, make_targets
from styleengine.engine.tiled import TiledStep
from styleengine.export.spec import GRAD, IMAGE, TV_WEIGHT

SHORT = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"), tv_weight=0.05)


def assert_lifecycle(step, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor,
                     computes: bool = True) -> None:
    """Runs `step` (just built) through its whole lifecycle, checking each state's refusals (computes: the
    step's losses are values to compare; a fake tensorrt's are whatever the buffers held)."""
    layers = list(SHORT.content_layers)
    with pytest.raises(StepStateError, match=r"set_targets\(\) before stepping"):
        step(image)  # built: no targets yet
    targets = make_targets(step, step.loss, content, [style])  # features work before targets
    step.set_targets(targets)
    first, second = step(image).loss, step(image).loss  # any number of calls
    assert first == second or not computes
    step.trim()
    with pytest.raises(StepStateError, match=r"set_targets\(\) before stepping"):
        step(image)  # trimmed: the targets went with the buffers
    assert set(step.features(image, layers)) == set(layers)  # features still work
    step.set_targets(targets)
    assert step(image).loss == first or not computes
    step.set_loss(step.loss)
    with pytest.raises(StepStateError, match=r"set_targets\(\) before stepping"):
        step(image)  # new loss weights: bound with the targets
    step.set_targets(targets)
    step(image)
    step.close()
    step.close()  # a second close does nothing
    for name, call in [("__call__", lambda: step(image)), ("set_targets", lambda: step.set_targets(targets)),
                       ("features", lambda: step.features(image, layers)), ("grams", lambda: step.grams(image, layers)),
                       ("trim", step.trim), ("set_loss", lambda: step.set_loss(step.loss))]:
        with pytest.raises(StepStateError, match=rf"{name}\(\) after close"):
            call()


def test_torch_step_lifecycle(vgg19_random, make_image):
    step = TorchStep(vgg19_random, SHORT)
    assert_lifecycle(step, make_image(32, 40, 1), make_image(32, 40, 2), make_image(32, 40, 3))
    with pytest.raises(StepStateError, match=r"tile_step\(\) after close"):
        step.tile_step(make_image(32, 32), (0, 0, 32, 32), {}, {}, {}, {})


def test_ort_step_lifecycle(vgg19_random, make_image):
    step = make_graph_step("ort", vgg19_random, SHORT, conv="direct")
    assert_lifecycle(step, make_image(32, 40, 1), make_image(32, 40, 2), make_image(32, 40, 3))
    assert not any(name in step.sessions for name in ("step", "features", "tile", "tile_features"))
    with pytest.raises(StepStateError, match=r"tile_features\(\) after close"):
        step.tile_features(make_image(32, 32), ["relu1_1"])  # would have made a session again


@pytest.mark.parametrize("size", [(48, 40), (32, 32)], ids=["tiled", "fits-one-tile"])
def test_tiled_step_lifecycle(vgg19_random, make_image, size):
    step = TiledStep(TorchStep(vgg19_random, SHORT), SHORT, "vgg19", tile=32)
    assert_lifecycle(step, *(make_image(*size, seed=s) for s in (1, 2, 3)))
    with pytest.raises(StepStateError, match="after close"):
        step.base.features(make_image(32, 32), ["relu1_1"])  # closing the tiled step closed its base


def test_ort_sessions_exist_by_their_rules(vgg19_random, make_image):
    """SESSION_RULES: each session made on first use, dropped at its lifecycle events, all at close."""
    step = make_graph_step("ort", vgg19_random, SHORT, conv="direct")
    open_now = lambda: {n for n in ("step", "features", "tile", "tile_features") if n in step.sessions}  # noqa: E731
    assert open_now() == set()  # the CPU provider starts whenever asked: nothing before it is needed
    targets = make_targets(step, SHORT, make_image(48, 40, 1), [make_image(48, 40, 2)])
    assert open_now() == {"features"}
    step.set_targets(targets)
    assert open_now() == {"step"}  # the one-off features session went before the step's came
    tiled = TiledStep(step, SHORT, "vgg19", tile=32)  # trims its base
    assert open_now() == set()
    tiled.set_targets(targets)
    tiled(make_image(48, 40, 3))
    assert open_now() == {"tile", "tile_features"}
    tiled.trim()
    assert open_now() == {"tile_features"}  # kept: the next tiled scale's first pass reuses its arena
    tiled.close()
    assert open_now() == set()


def test_graph_steps_take_one_picture(vgg19_random, make_image):
    step = make_graph_step("ort", vgg19_random, SHORT, conv="direct")
    targets = make_targets(step, SHORT, make_image(32, 32, 1), [make_image(32, 32, 2)])
    step.set_targets([targets])  # a batch of one is one picture
    assert torch.isfinite(step(make_image(32, 32, 3)).grad).all()
    with pytest.raises(ValueError, match="one picture at a time, not a batch of 2"):
        step.set_targets([targets, targets])
    step.close()


class RecordingRunner:
    def __init__(self):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.runs: list = []

    def bind_input(self, name, tensor):
        self.inputs[name] = tensor

    def bind_output(self, name, tensor):
        self.outputs[name] = tensor

    def run(self, stream):
        self.runs.append(stream)
        self.outputs[GRAD].fill_(1.0)


def test_graph_io_binds_every_name_of_the_spec_and_rebinds_a_new_runner(vgg19_random, make_image):
    from styleengine.engine.ort_step import graph_spec

    spec = graph_spec(vgg19_random, SHORT, "avg", "fp32")
    step = TorchStep(vgg19_random, SHORT)
    targets = make_targets(step, SHORT, make_image(32, 40, 1), [make_image(32, 40, 2)])
    io, runner = GraphIO(spec, torch.device("cpu")), RecordingRunner()
    io.attach(runner)
    io.set_targets(SHORT, targets)
    result = io(SHORT, make_image(32, 40, 3))
    assert sorted(runner.inputs) == sorted(spec.input_names()) and sorted(runner.outputs) == sorted(spec.output_names())
    assert runner.runs == [None] and torch.equal(result.grad, torch.ones(1, 3, 32, 40))
    # invariant weighting
    assert runner.inputs[TV_WEIGHT].item() == pytest.approx(SHORT.tv_weight * TV_UNIT / (3 * 32 * 40))
    fresh = RecordingRunner()  # a new session or engine context: it gets everything bound so far
    io.attach(fresh)
    assert sorted(fresh.inputs) == sorted(set(spec.input_names()) - {IMAGE})
    assert {n: t.data_ptr() for n, t in fresh.outputs.items()} == {n: t.data_ptr() for n, t in runner.outputs.items()}
