"""One stylisation run: settings -> weights, step, targets, init, loop, colour.

No printing, no argument parsing, no output paths: the caller (the CLI, a
notebook, a test) gets each iteration through `callback` and the final
image as an array.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from styleengine.engine import images, masks as spatial
from styleengine.engine.backends import make_step
from styleengine.choices import INITS, WEIGHT_WORDS
from styleengine.errors import ConfigError, SettingError
from styleengine.engine.loop import Record, Result, optimise_batch, uninterrupted
from styleengine.engine.losses import LossConfig
from styleengine.engine.quality import distances
from styleengine.engine.steps import Step, TargetCache, make_targets, resolve_device
from styleengine.engine.plan import Plan, make_plan, style_size
from styleengine.engine.autotune import Race
from styleengine.engine.race import RaceStep
from styleengine.engine.tiled import TiledStep
from styleengine.engine.settings import DEFAULTS, TEXTURE_INIT, Settings
from styleengine.model.convention import TORCHVISION, Convention
from styleengine.model.weights import Weights, convention_name, load_weights

# callback(record, current): `current()` returns the image so far as an
# (H, W, 3) array, finished as the final one will be (colours preserved)
Callback = Callable[[Record, Callable[[], np.ndarray]], None]




@dataclass(frozen=True)
class Prepared:
    """The images of one run at the output size, as (1, 3, H, W) tensors in [0, 1]."""

    content: torch.Tensor | None
    styles: list[torch.Tensor]
    height: int
    width: int
    masks: torch.Tensor | None = None  # (R, H, W): one region of the output per style (spatial control)
    style_masks: list[torch.Tensor | None] | None = None  # each at its style's (H, W); None: the whole style


def prepare(content: np.ndarray | None, styles: list[np.ndarray], settings: Settings, size: int,
            masks: spatial.Masks | None = None) -> Prepared:
    """Resize the content to `size` on its long side and each style to size * style_scale, and the masks
    with them.

    A texture (no content) takes the first style image's aspect ratio.
    """
    if not styles and (content is None or settings.style_layers):
        raise ConfigError("at least one style image is needed")
    ref = content if content is not None else styles[0]
    height, width = images.long_side_shape(ref.shape[0], ref.shape[1], size)
    content_t = images.to_tensor(images.resize(content, size)) if content is not None else None
    style_ts = [images.to_tensor(images.resize(s, style_size(settings, size))) for s in styles]
    if masks is None:
        return Prepared(content_t, style_ts, height, width)
    regions, style_masks = masks.at(height, width, [(s.shape[2], s.shape[3]) for s in style_ts])
    return Prepared(content_t, style_ts, height, width, regions, style_masks)


def load_init(settings: Settings) -> np.ndarray | None:
    """The image --init names, or None for a named start (choices.INITS); ImageError, one line, that names the
    starts when no file has the name (a typo of a start's name is no image either)."""
    return None if settings.init in INITS else images.load_image(settings.init, "init image")


def make_init(settings: Settings, prepared: Prepared, init_image: np.ndarray | None = None,
              convention: Convention = TORCHVISION) -> torch.Tensor:
    """The starting image (1, 3, H, W): seeded noise, the content, the first style, or a given image;
    `convention` is the network's input convention (randn's noise is in its units)."""
    shape = (1, 3, prepared.height, prepared.width)
    if settings.init in ("noise", "randn"):
        gen = torch.Generator().manual_seed(settings.seed)  # local: never touches torch's global RNG
        if settings.init == "noise":
            return torch.rand(shape, generator=gen)  # uniform white noise in [0, 1]
        # neural-style-pt's start: randn * 0.001 as the network's input, back in RGB [0, 1] (its mean pixel)
        scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in convention.scale_shift())
        network = torch.randn(shape, generator=gen) * 0.001
        return (network.index_select(1, torch.tensor(convention.rgb_permutation()).argsort()) - shift) / scale
    if settings.init == "content":
        if prepared.content is None:
            raise ConfigError("init 'content' needs a content image")
        return prepared.content.clone()
    if settings.init == "style":
        return images.resize_tensor(prepared.styles[0], prepared.height, prepared.width).clone()
    if init_image is None:
        init_image = images.load_image(settings.init, "init image")
    if settings.luminance_only:  # the loop runs on luminance images
        init_image = images.grey(images.luminance(init_image))
    height, width = init_image.shape[:2]
    if abs(width * prepared.height / (height * prepared.width) - 1.0) > spatial.ASPECT_SLACK:  # as neural-style: resized
        logging.getLogger(__name__).warning(
            "init image %s is %dx%d px, another aspect ratio than the picture's %dx%d px: it is stretched to it",
            settings.init, width, height, prepared.width, prepared.height)
    return images.resize_tensor(images.to_tensor(init_image), prepared.height, prepared.width).clone()


def check_available(settings: Settings) -> None:
    """UnavailableError now rather than after an export: the torch device, the ONNX Runtime provider
    (the checks create_session makes once the graphs exist) or TensorRT."""
    if settings.backend == "torch":
        resolve_device(settings.device)
    elif settings.backend == "tensorrt":
        from styleengine.engine.trt_step import _import_tensorrt

        _import_tensorrt()
    else:
        from styleengine.engine.ort_step import check_provider

        check_provider(settings.provider)


def check_place(settings: Settings) -> Settings:
    """The settings placed by rule (no trial), or ConfigError / UnavailableError now for a device, provider or
    TensorRT this machine lacks: every command says it before the weights are read (check_run; visualize)."""
    from styleengine.engine.autotune import choose

    settings = choose(settings, tune=False).settings
    check_available(settings)
    return settings


def check_run(settings: Settings, content_shape: tuple[int, int] | None, style_shapes: list[tuple[int, int]], *,
              content_label: str = "the content image", style_labels: list[str] | None = None,
              memory: int | None = None) -> Plan:
    """Everything the settings and the images' (height, width) decide, before any work: the run's Plan, or
    ConfigError / UnavailableError. content_shape None: a texture. The place comes by rule (no trial: a
    trial, if any, runs after these checks); the plan's checks are engine/plan.make_plan's."""
    settings.validate(texture=content_shape is None)
    settings = check_place(settings)
    return make_plan(settings, content_shape, style_shapes, content_label=content_label, style_labels=style_labels,
                     memory=memory)


def optimise_at_size(step: Step, loss: LossConfig, settings: Settings, prepared: list[Prepared],
                     inits: list[torch.Tensor], callback: Callable[[Record, torch.Tensor], None] | None, *,
                     blends: list[tuple[float, ...] | None], targets_step: Step | None = None,
                     offset: int = 0, measure: bool = True, last_use: bool = False, history: int = 0,
                     cache: TargetCache | None = None, kept: list[Result] | None = None) -> list[Result]:
    """Targets at this size, the loop from the inits, then (measure) the distances of each result: one Result
    per picture.

    One scale of a run; a coarse-to-fine run calls this per size (growing
    by sqrt(2)), each init the previous result upsampled. targets_step: the
    step that computes the targets and distances (default `step`); a
    TiledStep takes the style Grams tile by tile. Several pictures (one size)
    run as one batch. Records of every settings.distance_every-th iteration
    (counted across scales) carry the distances of the image after it.
    cache: a warm engine's features and Grams of pictures it has seen (steps.TargetCache).
    kept: the loop's results, put there as the loop makes them (see optimise_batch).
    last_use: the step runs no more after this loop, so it hands back its
    buffers (Step.trim) before the distances' features are computed (an ORT
    step's session held the loop's arena beside the features session: +260 MB
    at 384 px).
    """
    targets_step = targets_step or step
    targets = [make_targets(targets_step, loss, p.content, p.styles, list(blend) if blend else None,
                            output_positions=p.height * p.width, masks=p.masks, style_masks=p.style_masks,
                            cache=cache)
               for p, blend in zip(prepared, blends)]
    step.set_targets(targets[0] if len(targets) == 1 else targets)
    wanted = [every for every in (settings.save_every, settings.distance_every) if every]
    # --save-every and --distance-every count iterations across scales: the loop reads exactly those
    read_at = (lambda i: any((offset + i) % every == 0 for every in wanted)) if wanted else None
    with_distances: dict[tuple[int, int], Record] = {}  # (image, iteration) -> its record with the distances
    if settings.distance_every:
        inner, every = callback, settings.distance_every

        def callback(record: Record, image: torch.Tensor) -> None:
            if (offset + record.iteration) % every == 0:
                d = distances(targets_step, image, targets[record.index], loss)
                record = with_distances[record.index, record.iteration] = dataclasses.replace(record, distances=d)
            if inner is not None:
                inner(record, image)

    results = optimise_batch(step, torch.cat(inits), iterations=settings.iterations, optimizer=settings.optimizer,
                             lr=settings.lr, callback=callback,
                             history=history,
                             max_step=settings.lbfgs_max_step or None, read_at=read_at, kept=kept)
    if with_distances:  # the loop keeps its own records: these replace them
        results = [dataclasses.replace(r, records=[with_distances.get((rec.index, rec.iteration), rec)
                                                   for rec in r.records]) for r in results]
    if not measure:  # a coarse scale of a run: its result is the next scale's start, not the answer
        return results
    if last_use:
        step.trim()
    measured: list[Result] = []
    for index, (result, target) in enumerate(zip(results, targets)):
        if result.stopped == "interrupted" or (measured and measured[-1].stopped == "interrupted"):
            measured.append(dataclasses.replace(result, stopped="interrupted"))  # the user wants out
            continue
        read = with_distances.get((index, result.iterations)) if result.stopped is None else None
        if read is not None:  # the loop's last read measured this very image (the final x)
            measured.append(dataclasses.replace(result, distances=read.distances))
            continue
        try:
            measured.append(dataclasses.replace(result, distances=distances(targets_step, result.image, target, loss)))
        except KeyboardInterrupt:  # during the measurement: the loop's contract, its image is the result
            measured.append(dataclasses.replace(result, stopped="interrupted"))
    return measured


def build_step(settings: Settings, weights: Weights, loss: LossConfig, max_side: int | None = None) -> Step:
    """The step these (resolved) settings ask for, built with `loss`'s layers; max_side: the run's largest
    side (its plan's last scale), so a TensorRT engine is built once for every scale."""
    with torch.random.fork_rng(devices=[]):  # building nn.Conv2d layers draws from torch's global generator
        return make_step(settings.backend, weights, loss, pooling=settings.pooling,  # type: ignore[arg-type]
                         device=settings.device, precision=settings.precision, provider=settings.provider,
                         conv=settings.conv, max_side=max_side, devices=settings.devices,
                         split_at=settings.split_at)


def load_run_weights(settings: Settings) -> Weights:
    """The weights the settings name, fed with the input convention the settings give them."""
    weights = load_weights(settings.model, settings.weights, seed=settings.seed, strict=not settings.non_strict,
                           range_checked=True)
    # the flags with the file's own, before any work (batch and serve load a file at their start); a file with
    # no metadata that is not a known one runs with torchvision's, assumed
    assumed = weights.convention_source.startswith("assumed")
    settings.check_convention_range(weights.convention, "torchvision's (assumed for the weights)" if assumed
                                    else "the weights'")
    convention = settings.input_convention(weights.convention)
    if convention == weights.convention:
        return weights
    return dataclasses.replace(weights, convention=convention, convention_source=(
        f"from flags (over its {convention_name(weights.convention)} {weights.convention_source})"))


def check_weights(settings: Settings) -> Weights | None:
    """The weights file the settings name, loaded as the run loads it (load_run_weights), or None for the words
    "imagenet" and "random", which name no file. Called before any work by batch, serve and tune: a file their
    model cannot use (unreadable, another network's, NaN) is one WeightsError line, not every job's failure."""
    if settings.weights in WEIGHT_WORDS:  # imagenet's download stays the first job's, as before
        return None
    return load_run_weights(settings)


@dataclass(frozen=True)
class Picture:
    """One picture of stylise_batch: arrays from images.load_image and its own settings."""

    content: np.ndarray | None  # None: a texture
    styles: list[np.ndarray]
    settings: Settings
    init_image: np.ndarray | None = None  # the image for an init path, if the caller has loaded it
    masks: spatial.Masks | None = None  # settings.content_masks read (engine/masks.py); None: read here


# what may differ between the pictures of one batch: each picture's own targets and start
PER_PICTURE = ("init", "style_blend", "style_scale", "preserve_colors", "luminance_only", "save_every")


def batch_key(settings: Settings) -> Settings:
    """Settings with the per-picture fields cleared: pictures whose keys are equal (and whose outputs have
    one shape) can be optimised together. The seed is per picture unless it seeds random weights."""
    cleared = {name: getattr(DEFAULTS, name) for name in PER_PICTURE}
    if settings.weights != "random":
        cleared["seed"] = DEFAULTS.seed
    return dataclasses.replace(settings, **cleared)


def stylise(content: np.ndarray | None, styles: list[np.ndarray], settings: Settings = Settings(), *,
            callback: Callback | None = None, weights: Weights | None = None,
            init_image: np.ndarray | None = None, step: Step | None = None, plan: Plan | None = None,
            masks: spatial.Masks | None = None) -> tuple[np.ndarray, Result]:
    """Stylise `content` with `styles` (arrays from images.load_image); content None synthesises a texture.

    weights: already loaded, and then the caller's to keep; None: loaded from
    settings.weights and let go once the step is built, so the loop holds
    none beside it (an ORT step has its own in its session, a torch step the
    layers it uses). init_image:
    the image for an init path, if the caller has loaded it already. step:
    a step built for these settings' backend, device, precision, model,
    weights, pooling and layers and kept warm by the caller, who closes it
    (engine/batch.py's Warm); the loss weights are set on it here. None:
    built here and closed at the end. masks: settings.content_masks and
    style_masks as the caller has read them (engine/masks.py); None: read here.
    Returns the final (H, W, 3) array and the loop's Result (records, why
    it stopped); after a non-finite loss the array is the last finite image.
    """
    try:
        return stylise_batch([Picture(content, styles, settings, init_image, masks)], callback=callback,
                             weights=weights, step=step, plan=plan)[0]
    except SettingError as e:  # said as the Settings field its caller set (a command names it again, by its flag)
        raise e.named(e.setting) from None


def stylise_batch(pictures: list[Picture], *, callback: Callback | None = None, weights: Weights | None = None,
                  step: Step | None = None, plan: Plan | None = None, cache: TargetCache | None = None
                  ) -> list[tuple[np.ndarray, Result]]:
    """stylise() for several pictures optimised together, as one batch through one step: (array, Result)
    each, in order; the records of picture i carry index i.

    More than one picture needs equal batch_key()s, one shape at every scale, no tile and the torch
    backend (ValueError otherwise: the caller groups them, engine/batch.py); one picture is stylise().
    plan: the first picture's, made by check_run for these settings (the CLI's, checked before it loaded
    anything); None: made here. Its scales (size, iterations, tile, L-BFGS history) are what runs.
    cache: a warm engine's targets of pictures seen before (batch.Warm.targets), used with its warm `step`.
    """
    if not pictures:  # nothing to run: an empty result, as a batch of no jobs has
        return []
    fixed: list[Picture] = []
    plans: list[Plan] = []
    race = None  # one run's own step with auto left open: its candidates race in its first steps
    for picture in pictures:
        for what, array in (("content image", picture.content), ("init image", picture.init_image),
                            *((f"style image {i + 1}", style) for i, style in enumerate(picture.styles))):
            if array is not None:
                images.check_loaded(array, what)
        if picture.content is None:
            # texture synthesis: alpha = 0, no content layers, white noise unless another init is asked for
            picture = dataclasses.replace(picture, settings=dataclasses.replace(
                picture.settings, preserve_colors=False, luminance_only=False,
                init=TEXTURE_INIT if picture.settings.init == "content" else picture.settings.init))
        if plan is None or plans:  # the memory is probed once, for the first picture
            plans.append(check_run(picture.settings, picture.content.shape[:2] if picture.content is not None else
                                   None, [s.shape[:2] for s in picture.styles],
                                   memory=plans[0].memory if plans else None))
        if picture.settings.content_masks and picture.masks is None and picture.content is not None:
            picture = dataclasses.replace(picture, masks=spatial.load(
                picture.settings, picture.content.shape[:2], [s.shape[:2] for s in picture.styles]))
        if step is None and len(pictures) == 1:
            from styleengine.engine.autotune import choose

            choice = choose(picture.settings, race=True)
            race = choice.race
            fixed.append(dataclasses.replace(picture, settings=choice.settings))
        else:
            fixed.append(dataclasses.replace(picture, settings=picture.settings.resolved()))
    scales = (plan or plans[0]).scales
    pictures = fixed
    settings = pictures[0].settings
    texture = pictures[0].content is None
    if len(pictures) > 1 and (len({batch_key(p.settings) for p in pictures}) > 1
                              or any((p.content is None) != texture for p in pictures)):
        raise ValueError("the pictures of one batch must share every setting but " + ", ".join(PER_PICTURE))
    if len(pictures) > 1 and settings.backend != "torch":
        raise ValueError("batches run on the torch backend")
    loaded = weights is None  # then nothing but the step needs them: let them go once it is built
    if weights is None:
        weights = load_run_weights(settings)
    elif weights.model != settings.model:
        raise ConfigError(f"weights are for {weights.model}, settings ask for {settings.model}")
    loss = settings.loss_config(texture=texture)

    def prepare_all(size: int) -> list[Prepared]:
        done = [prepare(p.content, p.styles, p.settings, size, p.masks) for p in pictures]
        if len({(q.height, q.width) for q in done}) > 1:
            raise ValueError(f"the pictures of one batch must have one shape at every scale, got "
                             f"{sorted({(q.height, q.width) for q in done})} at {size} px")
        return done

    # luminance-only: the loop sees greyscale images, the result takes its colours from the original content
    colours: list[np.ndarray | None] = [None] * len(pictures)
    for i, p in enumerate(pictures):
        if p.settings.luminance_only and p.content is not None:
            colours[i] = p.content
            content, styles = images.luminance_only(p.content, p.styles)
            pictures[i] = dataclasses.replace(p, content=content, styles=styles)
    prepared = prepare_all(scales[0].size)
    inits = [make_init(p.settings, q, p.init_image, weights.convention) for p, q in zip(pictures, prepared)]
    # per scale: each content at this scale's size (colour preservation) and the iterations done before it
    scale: dict = {"content": [images.to_array(q.content) if q.content is not None else None for q in prepared],
                   "offset": 0}

    def finish(index: int, image: torch.Tensor) -> np.ndarray:
        out = np.clip(images.to_array(image), 0.0, 1.0)
        colour = colours[index]
        if colour is not None:
            out = images.preserve_colors(out, colour)
        elif pictures[index].settings.preserve_colors and scale["content"][index] is not None:
            out = images.preserve_colors(out, scale["content"][index])
        return out

    loop_callback = None
    if callback is not None:
        def loop_callback(record: Record, image: torch.Tensor) -> None:
            # iterations count across scales; the record's height/width say which scale it is
            callback(dataclasses.replace(record, iteration=record.iteration + scale["offset"]),
                     lambda: finish(record.index, image))

    owned = step is None
    max_side = max(scales[-1].height, scales[-1].width)
    racer: RaceStep | None = None
    if race is not None:
        # the racer holds the weights: it builds its candidates
        racer = race_step(race, weights, loss, max_side,
                          [(max(s.height, s.width), s.height * s.width, s.iterations) for s in scales])
        step = racer
    elif step is None:
        step = build_step(settings, weights, loss, max_side=max_side)
    else:
        step.set_loss(loss)
    if loaded:  # an ORT step has its own copy in its session, a torch one the tensors its layers use
        del weights
    # the last finished scale's (index, results, records): one assignment, so a signal anywhere finds them whole;
    # a scale's loop puts its results in `kept` (tagged with the scale) as it makes them
    committed: tuple[int, list[Result], list[list[Record]]] = (-1, [], [[] for _ in pictures])
    kept: tuple[int, list[Result]] = (-1, [])
    blends = [p.settings.style_blend for p in pictures]

    def joined(index: int, parts: list[Result]) -> tuple[int, list[Result], list[list[Record]]]:
        """`committed` grown by scale `index`'s results (its records counted on across scales)."""
        grown = [rec + [dataclasses.replace(r, iteration=r.iteration + scale["offset"]) for r in part.records]
                 for part, rec in zip(parts, committed[2])]
        return index, [Result(part.image, len(rec), part.stopped, rec, part.distances)
                       for part, rec in zip(parts, grown)], grown

    def started(parts: list[Result]) -> bool:
        """Whether a scale's loop ran an iteration: before its first, its picture is only its start (a later
        scale's: the last one's upsampled, which was written as if it were the --size result)."""
        return any(part.records for part in parts)

    def cut_short() -> list[Result]:
        """What a signal anywhere in the scales leaves: this scale's pictures once its loop made them, else the
        last finished scale's (the loop's contract); none before the first scale's loop made any."""
        index, made = kept
        return joined(index, made)[1] if index > committed[0] and made and started(made) else committed[1]

    try:
        try:
            for index, at in enumerate(scales):
                kept = (index, [])
                if index:  # each picture from its previous scale's result, upsampled
                    prepared = prepare_all(at.size)
                    inits = [images.resize_tensor(r.image.detach().cpu(), q.height, q.width)
                             for r, q in zip(committed[1], prepared)]
                    scale["content"] = [images.to_array(q.content) if q.content is not None else None
                                        for q in prepared]
                scale["offset"] = len(committed[2][0])
                if at.tile is not None and len(pictures) > 1:
                    raise ValueError("a tiled step runs one picture at a time")
                if racer is not None:
                    racer.begin_scale(prepared[0].height, prepared[0].width, tiled=at.tile is not None)
                inner = racer.current if racer is not None and at.tile is not None else step
                tiled = TiledStep(inner, loss, settings.model, tile=at.tile) if at.tile is not None else None
                last = index == len(scales) - 1
                parts = optimise_at_size(tiled or step, loss, dataclasses.replace(settings, iterations=at.iterations),
                                         prepared, inits, loop_callback, blends=blends, targets_step=tiled,
                                         offset=scale["offset"], measure=last, last_use=owned and last,
                                         history=at.history, cache=None if owned or tiled else cache, kept=kept[1])
                if index and not started(parts) and any(part.stopped for part in parts):  # before its first iteration
                    committed = (committed[0], [dataclasses.replace(r, stopped=part.stopped)
                                                for r, part in zip(committed[1], parts)], committed[2])
                    break
                committed = joined(index, parts)
                if any(r.stopped is not None for r in committed[1]):
                    break
            results = committed[1]
        except KeyboardInterrupt:
            results, _ = uninterrupted(cut_short)
            if not results:  # before the first scale's loop made a picture
                raise
            results = [dataclasses.replace(r, stopped=r.stopped or "interrupted") for r in results]
    except BaseException:
        if owned:
            step.close()
        raise
    try:
        if owned:
            step.close()
        if racer is not None:
            lines = tuple(f"at {d.side} px: {d.why}" for d in racer.decisions if d.raced)
            results = [dataclasses.replace(r, auto=lines + ((racer.cost(),) if lines else ())) for r in results]
    except KeyboardInterrupt:  # after the loop: its pictures are whole, the signal said as the loop says one
        results = [dataclasses.replace(r, stopped=r.stopped or "interrupted") for r in results]
    finished = []
    for i, r in enumerate(results):
        try:
            finished.append((finish(i, r.image), r))
        except KeyboardInterrupt:  # as above; a second one (the API has no handler) stops it
            finished.append((finish(i, r.image), dataclasses.replace(r, stopped=r.stopped or "interrupted")))
    return finished


def race_step(race: Race, weights: Weights, loss: LossConfig, max_side: int, scales: list[tuple[int, int, int]]
              ) -> RaceStep:
    """The step of a run whose auto choices race in its first steps (engine/race.py)."""
    from styleengine.engine.trial import uncached_graphs

    settings = race.settings
    return RaceStep(race, lambda concrete: build_step(concrete, weights, loss, max_side=max_side), loss, scales,
                    uncached=lambda option: bool(uncached_graphs(settings, weights, loss, [option], race.where)))
