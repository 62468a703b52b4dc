"""`styleengine visualize --class N -o OUT`: class-score ascent (engine/visualize.py)."""
from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from styleengine.cli_job import end_if_stopped, loop_result, nothing_before_the_result, result_held, stop_said_with, \
    write_or_rescue
from styleengine import paths
from styleengine.choices import WEIGHT_WORDS
from styleengine.cli_run import Output
from styleengine.cli_settings import settings_from, with_settings
from styleengine.engine.settings import DEFAULTS as d, RUN
from styleengine.engine.loss_config import check_float32
from styleengine.errors import ConfigError


def _weight(value: float, flag: str) -> float:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a finite number >= 0, got {value}")
    check_float32(flag, value)  # as a run's loss weights
    return value


@nothing_before_the_result
def _visualize(
    output: Output,
    target: Annotated[int, typer.Option("--class", help="The class index (ImageNet: 0-999).")],
    weights: Annotated[str, typer.Option(
        "--weights", help="imagenet (torchvision's, cached download), a full VGG checkpoint file (classifier "
                          "included), or random (an untrained network and classifier: tests).",
        parser=paths.named_text("--weights", WEIGHT_WORDS))] = d.weights,
    l2_weight: Annotated[float, typer.Option(
        "--l2-weight", help="lambda of Simonyan et al.'s L2 penalty (a mean over pixels of the [0, 1] image "
                            "minus the ImageNet mean).")] = 10.0,
    tv_weight: Annotated[float, typer.Option("--tv-weight", help="Smoothness prior (not in Simonyan et al.).")] = 10.0,
    **flags: Any,
) -> None:
    """Find the picture that maximises the score of class N (Simonyan et al. 2014) and write OUT."""
    import torch
    from styleengine.console import warnings_on
    from styleengine.console import Console

    from styleengine.engine.loop import optimise
    from styleengine.engine.plan import check_untiled
    from styleengine.engine.stylise import check_place
    from styleengine.engine.visualize import ClassScoreStep, mean_image
    from styleengine.model.classifier import KEYS, class_name, load_classifier
    from styleengine.model.weights import load_weights

    console = Console(stderr=True, markup=False)
    with warnings_on(console):  # the engine's warnings as "warning:" lines, escaped
        if target < 0:
            raise ConfigError(f"--class must be a class index >= 0, got {target}")
        _weight(l2_weight, "--l2-weight")
        _weight(tv_weight, "--tv-weight")
        settings = settings_from(flags, RUN, weights=weights, backend="torch")
        settings.validate()
        size, iters, optimizer, lr, seed, model, device = (settings.size, settings.iterations, settings.optimizer,
                                                           settings.lr, settings.seed, settings.model, settings.device)
        paths.check_output_path(output)
        placed = check_place(settings)  # a missing GPU in run's words, before the weights are read or downloaded
        history = check_untiled(placed, ("pool5",), size, size)  # the classifier reads pool5
        classifier = load_classifier(weights, model, seed)
        if target >= classifier.classes:
            raise ConfigError(f"--class {target}: the classifier has classes 0-{classifier.classes - 1}")
        features = load_weights(model, weights, seed=seed)
        # the classifier's keys are read here: the features' line said they were ignored
        console.print(f"{features.describe(read=KEYS)}; classifier: {classifier.classes} classes", highlight=False,
                      soft_wrap=True, markup=False)
        name = class_name(target) if classifier.classes == 1000 and not features.is_random else None
        with ClassScoreStep(features, classifier, target, l2_weight=l2_weight, tv_weight=tv_weight,
                            device=device) as step:
            start = mean_image(size, size)
            with torch.no_grad():
                before = float(step.scores(start.to(step.device))[0, target])
            result = loop_result(lambda kept: optimise(step, start, iterations=iters, optimizer=optimizer, lr=lr,
                                                       max_step=d.lbfgs_max_step, kept=kept, history=history))
            with result_held(result):  # from here to the last line: a signal before `stopped` is said, none after
                with torch.no_grad():
                    after = step.scores(result.image.clamp(0, 1).to(step.device))[0]
                step.close()
                with stop_said_with(result, output, console):
                    write_or_rescue(result.image, output, [])
                end_if_stopped(result, output, console)  # the current image is written; the exit code says it was cut
                label = f"class {target} ({name})" if name else f"class {target}"
                console.print(f"wrote {output} ({label}: score {before:.3g} -> {float(after[target]):.3g}, "
                              f"rank {int((after > after[target]).sum()) + 1} of {classifier.classes}; "
                              f"{result.iterations} iterations)", highlight=False, soft_wrap=True)


visualize = with_settings(_visualize, RUN, ("model", "size", "iterations", "optimizer", "lr", "seed", "device"),
                          defaults={"model": "vgg16", "size": 224, "iterations": 200, "device": "cpu"})
