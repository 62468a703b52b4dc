"""Gradient steps: image -> (loss, d loss / d image).

Everything that differs between backends lives behind this interface; the
loop, optimisers, targets and CLI never know which step runs. The image is
RGB in [0, 1], (1, 3, H, W) fp32, on the step's device: preprocessing by
the weights' input convention happens inside the step, so the optimiser
and the TV term see pixels whatever the weights expect.
"""
from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from styleengine.choices import device_kind, gpu_index
from styleengine.errors import ConfigError, UnavailableError
from styleengine.engine.losses import LossConfig, Targets, content_loss, gram, style_grad_surrogate, total_loss
from styleengine.engine.winograd import resolve_conv, use_winograd
from styleengine.model.network import VGGFeatures
from styleengine.model.vgg import Pooling
from styleengine.model.weights import Convention, Weights


LOSS_TERMS = ("loss", "content", "style", "tv")  # the order of StepResult.losses


@dataclass(frozen=True)
class StepResult:
    """One evaluation, left on the step's device: reading a value on the host is the caller's
    choice (on a GPU, a sync). The tensors may be reused by the step's next call."""

    # (4,) fp32: the total and the weighted content, style and tv terms (LOSS_TERMS); (B, 4) for a batch
    losses: torch.Tensor
    grad: torch.Tensor  # (1, 3, H, W) fp32 (a batch: (B, 3, H, W)), on the step's device

    @classmethod
    def from_floats(cls, loss: float, grad: torch.Tensor, parts: dict[str, float]) -> "StepResult":
        values = [loss] + [parts[k] for k in LOSS_TERMS[1:]]
        return cls(torch.tensor(values, dtype=torch.float32, device=grad.device), grad)

    @property
    def loss(self) -> float:
        return float(self.losses[0])

    @property
    def parts(self) -> dict[str, float]:
        return dict(zip(LOSS_TERMS[1:], self.losses[1:].tolist()))


class StepStateError(RuntimeError):
    """A step used out of its lifecycle's order: a bug in the caller, not the user's error."""


class Step(Protocol):
    """What the loop, the targets, the runs and the bench need of a backend (torch, ORT, TensorRT, tiled).

    Lifecycle: build -> set_targets -> call (any number of times) -> trim -> set_targets again before the
    next call ... -> close. features and grams work at any point before close. Calling without targets
    (before set_targets, after trim or set_loss) or anything but close after close raises StepStateError.
    """

    device: torch.device
    capturable: bool  # StepBase: False
    loss: LossConfig

    @property
    def conv(self) -> str:
        """The convolutions it runs, "direct" or "winograd" ("auto" resolved)."""

    def features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Activations (fp32) of the named layers for an image in [0, 1]."""

    def grams(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Gram matrices (C, C) fp32 of the named layers (StepBase: from features)."""

    def set_loss(self, loss: LossConfig) -> None:
        """Weigh the terms as `loss` says (the same layers); the targets go: set_targets before the next call."""

    def set_targets(self, targets: Targets | list[Targets]) -> None:
        """One image's targets, or a list for a batch (the torch step; the others take a list of one)."""

    def __call__(self, image: torch.Tensor) -> StepResult: ...

    def trim(self) -> None:
        """Hand back the buffers only stepping needs, the targets with them (features and Grams still work):
        before a tiled scale (the untiled step's), and after a run's last step, before its final distances."""

    def close(self) -> None:
        """Hand back everything; a second close does nothing."""

    def __enter__(self) -> "Step": ...

    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class TileableStep(Step, Protocol):
    """A step an exact TiledStep can wrap (engine/tiled.py): features per tile and a tile's step."""

    def tile_features(self, tile: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """features() for a tiled step's first pass, which runs every iteration."""

    def tile_step(self, tile: torch.Tensor, core: tuple[int, int, int, int], content: dict[str, torch.Tensor],
                  gram_diffs: dict[str, torch.Tensor], style_coeffs: dict[str, float],
                  content_coeffs: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted content loss over the core, a 0-d tensor; d(content + style) / d tile)."""


class StepBase:
    """The lifecycle every step shares, checked here (Step's docstring); a step implements the parts:
    _features, _set_targets, _step, _trim, _close (and _grams, default: Grams of features)."""

    # the loop may capture `step(x)` + the optimiser update in a CUDA graph and replay it: true of a step
    # whose call issues the same device work every time for one image size, with no host sync or host copy
    capturable = False
    loss: LossConfig  # each step's own, set in its __init__
    # class defaults: the state of a step just built
    _has_targets = False
    _closed = False

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StepStateError(f"{type(self).__name__}.{what}() after close()")

    def features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        self._check_open("features")
        return self._features(image, names)

    def grams(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        self._check_open("grams")
        return self._grams(image, names)

    def _features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _grams(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        return {n: gram(f) for n, f in self.features(image, names).items()}  # a wrapper's own features

    def set_loss(self, loss: LossConfig) -> None:
        """Weigh the terms as `loss` says from now on (a step kept warm across runs whose weights differ).
        The graph steps bind the weights with the targets, so the targets go: set_targets again. The layers
        are the step's own."""
        self._check_open("set_loss")
        built = self.loss
        if (loss.content_layers, loss.style_layers) != (built.content_layers, built.style_layers):
            raise ValueError(f"a step built for layers {built.layers} cannot run layers {loss.layers}")
        self.loss = loss
        self._has_targets = False

    def set_targets(self, targets: Targets | list[Targets]) -> None:
        self._check_open("set_targets")
        self._has_targets = False  # until these are in place
        self._set_targets(targets)
        self._has_targets = True

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor) -> StepResult:
        self._check_open("__call__")
        if not self._has_targets:
            raise StepStateError(f"{type(self).__name__}: set_targets() before stepping (after build, trim or "
                                 f"set_loss)")
        return self._step(image)

    def _step(self, image: torch.Tensor) -> StepResult:
        raise NotImplementedError

    def trim(self) -> None:
        self._check_open("trim")
        self._has_targets = False
        self._trim()

    def _trim(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed, self._has_targets = True, False
        self._close()

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def single_targets(step: object, targets: Targets | list[Targets]) -> Targets:
    """The one image's targets of a step that runs one picture at a time (a list of one is that one)."""
    if not isinstance(targets, list):
        return targets
    if len(targets) != 1:
        raise ValueError(f"{type(step).__name__} runs one picture at a time, not a batch of {len(targets)}")
    return targets[0]


def resolve_device(device: str) -> torch.device:
    """The torch device of a device name (auto, cpu, cuda, cuda:N); UnavailableError for a GPU not here."""
    kind = device_kind(device)  # ConfigError for a name that is none of these
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UnavailableError(f"--device {device}: this torch build or machine has no CUDA device (try "
                                   f"--device cpu)")
        count = torch.cuda.device_count()
        if gpu_index(device) >= count:
            raise UnavailableError(f"--device {device}: this machine has {count} GPU{'s' if count > 1 else ''} "
                                   f"(cuda:0{f'-cuda:{count - 1}' if count > 1 else ''})")
    return torch.device(device)


def preprocess_params(convention: Convention, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    scale, shift = convention.scale_shift()
    return (torch.tensor(scale, device=device).view(1, 3, 1, 1),
            torch.tensor(shift, device=device).view(1, 3, 1, 1), convention.rgb_permutation())


def build_network(weights: Weights, names: list[str], pooling: Pooling) -> VGGFeatures:
    """The frozen network up to the deepest of `names`, on the weights' own tensors (assigned, not copied:
    a second copy was 52 MB of VGG19 resident for nothing; nothing writes to them, and .to() copies
    for another device or dtype)."""
    net = VGGFeatures(weights.model, names, pooling)
    # detached: the module's own tensor objects on the same storage, so a later .to() or requires_grad_ on the
    # module cannot reach the caller's (a Weights built from Parameters would otherwise become the network's)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in weights.state.items() if k in net.state_dict()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


class TorchStep(StepBase):
    """The reference: autograd through the frozen VGG, input gradient only."""

    def __init__(self, weights: Weights, loss: LossConfig, *, pooling: Pooling = "avg",
                 device: str = "cpu", precision: str = "fp32", conv: str = "auto",
                 devices: tuple[str, ...] = (), split_at: tuple[str, ...] = ()):
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"the torch backend runs fp32 or bf16, not {precision!r}")
        loss.validate(weights.model)
        self.device = resolve_device(devices[0] if devices else device)
        self.loss, self.precision = loss, precision
        # bf16: the network itself in bf16 (convolutions, ReLUs, pools), sums in fp32 (losses._accumulate);
        # what autocast runs, without re-casting the weights every iteration
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.net = build_network(weights, loss.layers, pooling).to(self.device, dtype)
        # channels-last lets oneDNN pick its blocked kernels (bf16: 0.74 s vs 1.28 s fp32 at 512 px) and
        # cuDNN its NHWC ones. Not for fp32 on the CPU: NNPACK reads NCHW, and direct channels-last (0.93x
        # the time at 384x512) loses to Winograd (0.62x)
        fast_layout = precision == "bf16" or self.device.type == "cuda"
        self.memory_format = torch.channels_last if fast_layout else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stub omits it
        # fp32 on the CPU: Winograd (NNPACK) convolutions, ~0.4x oneDNN's direct ones (engine/winograd.py);
        # conv="direct" is the reference the graphs are validated against
        self.conv = resolve_conv(conv, self.device, dtype)
        if self.conv == "winograd":
            use_winograd(self.net)
        if devices:  # the run lives on the first; each later one computes its share of the layers
            self.net.spread([resolve_device(d) for d in devices], list(split_at) or None)
        self.dtype = dtype
        # the style terms' gradients taken in the forward where the network keeps no features of its own
        # (Winograd) or the terms hold an fp32 copy of them (bf16): less memory at the backward's peak
        self.eager_style_grad = self.conv == "winograd" or dtype != torch.float32
        self.scale, self.shift, self.perm = preprocess_params(weights.convention, self.device)
        self.perm_index = torch.tensor(self.perm, device=self.device)  # index_select: no host copy per call
        self.targets: Targets | list[Targets] | None = None
        if self.device.type == "cuda":
            # the same kernels every iteration: let cuDNN time its algorithms once (as popular
            # implementations do; a process-wide flag); the loop then captures step + update in a CUDA graph
            torch.backends.cudnn.benchmark = True
            self.capturable = True

    def _forward(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        x = (image * self.scale + self.shift).index_select(1, self.perm_index)
        return self.net(x.to(self.dtype).contiguous(memory_format=self.memory_format), names)

    @torch.no_grad()
    def _features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        # bf16 features as fp32; a float64 twin's (in_float64) stay float64
        return {k: v.to(torch.promote_types(v.dtype, torch.float32))
                for k, v in self._forward(image.to(self.device), names).items()}

    def in_float64(self) -> TorchStep:
        """This step's network in float64 (fed float64 images and targets, it computes the loss and gradient in
        float64): the arbiter when a graph and the fp32 step disagree by about fp32's own error. Direct
        convolutions only (NNPACK's Winograd is fp32's)."""
        if self.conv != "direct":
            raise ValueError("a float64 twin needs direct convolutions")
        self.net, self.dtype = self.net.to(torch.float64), torch.float64
        return self

    def tile_features(self, tile: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """A tiled step's first pass: features(); torch's allocator needs no separate care."""
        self._check_open("tile_features")
        return self._features(tile, names)

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        """One image's targets, or a list: a batch, image b of each call against targets[b]."""
        self.targets = [t.to(self.device) for t in targets] if isinstance(targets, list) else targets.to(self.device)

    def _step(self, image: torch.Tensor) -> StepResult:
        """image (1, 3, H, W) -> losses (4,); a batch (B, 3, H, W) with B targets -> losses (B, 4), the
        gradient of each image's own loss (the images do not interact: the sum's gradient)."""
        assert self.targets is not None  # the lifecycle's check (StepBase.__call__)
        batch = isinstance(self.targets, list)
        if isinstance(self.targets, list) and len(self.targets) != image.shape[0]:
            raise ValueError(f"{len(self.targets)} targets for a batch of {image.shape[0]} images")
        x = image.detach().to(self.device).requires_grad_(True)
        with torch.enable_grad():
            feats = self._forward(x, self.loss.layers)
            if not batch:
                terms = total_loss(self.loss, feats, self.targets, x, self.eager_style_grad)  # type: ignore[arg-type]
                del feats  # what the backward needs, the graph holds; the rest goes as soon as it may
                (grad,) = torch.autograd.grad(terms["loss"], x)
                return StepResult(torch.stack([terms[k].detach().float() for k in LOSS_TERMS]), grad)
            # per image: its own Grams and terms, by the one definition of the loss  # (B, C, h, w) -> (1, C, h, w)
            per = [total_loss(self.loss, {n: f[b:b + 1] for n, f in feats.items()}, t, x[b:b + 1],
                              self.eager_style_grad)
                   for b, t in enumerate(self.targets)]  # type: ignore[arg-type]
            del feats
            (grad,) = torch.autograd.grad(torch.stack([p["loss"] for p in per]).sum(), x)
        return StepResult(torch.stack([torch.stack([p[k].detach().float() for k in LOSS_TERMS]) for p in per]), grad)

    def tile_step(self, tile: torch.Tensor, core: tuple[int, int, int, int], content: dict[str, torch.Tensor],
                  gram_diffs: dict[str, torch.Tensor], style_coeffs: dict[str, float],
                  content_coeffs: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """One tile of an exactly tiled step (engine/tiled.py).

        tile (1, 3, h, w); core = (top, left, bottom, right) in tile pixels: the
        positions whose loss this tile owns (top/left multiples of the total
        stride); content: content targets over the whole tile at each content
        layer; gram_diffs: G - A of the FULL image per style layer; style_coeffs:
        beta w_l / (N_l^2 M_l^2) with M_l of the full image (engine.losses.gram_style); content_coeffs:
        alpha c_l per content layer, c_l of the full image (engine.losses.content_coeffs).
        Returns the weighted content loss over the core and
        d(content + style) / d tile; TV is the caller's (it is not local to tiles).
        """
        self._check_open("tile_step")
        x = tile.detach().to(self.device).requires_grad_(True)
        strides = {layer.name: layer.stride for layer in self.net.layers}
        top, left, bottom, right = core
        with torch.enable_grad():
            feats = self._forward(x, self.loss.layers)
            zero = x.new_zeros(())

            def crop(name: str, f: torch.Tensor) -> torch.Tensor:
                s = strides[name]
                return f[:, :, top // s: bottom // s, left // s: right // s].float()

            content_term = sum((content_coeffs[n] * content_loss(crop(n, feats[n]), crop(n, content[n].to(self.device)))
                                for n in self.loss.content_layers), zero)
            # the style gradient with the full image's G - A, restricted to this core
            style = zero
            for n in self.loss.style_layers:
                style = style + style_grad_surrogate(crop(n, feats[n]), gram_diffs[n].to(self.device), style_coeffs[n])
            (grad,) = torch.autograd.grad(content_term + style, x)
        return content_term.detach(), grad

    def _trim(self) -> None:
        self.targets = None

    def _close(self) -> None:
        self.net = None  # type: ignore[assignment]
        self.targets = None


class TargetCache:
    """Content features and style Grams a warm engine computed, by the step that computed them and the exact
    pixels they came from (a hash of the tensor): a picture sent again (the same photo and painting at another
    strength, one painting for many photos) costs no forward pass. Same step and same pixels give the same
    values, so nothing else can make an entry stale; each step keeps its latest `entries`."""

    def __init__(self, entries: int = 8):
        self._entries = entries
        self._by_step: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a closed step's go with it
        self.hits = self.misses = 0

    def get(self, step: object, kind: str, layers: list[str], image: torch.Tensor,
            compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = image.detach().contiguous().cpu()
        key = (kind, tuple(layers), tuple(pixels.shape), str(pixels.dtype),
               hashlib.sha256(pixels.view(torch.uint8).numpy().data).hexdigest())  # bytes in place, any dtype
        held: OrderedDict = self._by_step.setdefault(step, OrderedDict())
        if key in held:
            self.hits += 1
            held.move_to_end(key)
        else:
            self.misses += 1
            held[key] = compute()
            while len(held) > self._entries:
                held.popitem(last=False)
        return {name: t.clone() for name, t in held[key].items()}  # the caller's to change


def make_targets(step: Step, loss: LossConfig, content: torch.Tensor | None,
                 styles: list[torch.Tensor], blend: list[float] | None = None,
                 output_positions: int | None = None, masks: torch.Tensor | None = None,
                 style_masks: list[torch.Tensor | None] | None = None, cache: TargetCache | None = None
                 ) -> Targets:
    """Content features and blended style Grams, computed with the step's own network.

    content: (1, 3, H, W) or None (texture synthesis); styles: already at the
    size their features should be taken at. masks: (R, H, W) at the output's
    size, one region per style (spatial control): each region's target is its
    style's guided Gram over style_masks[r] (each at its style's size; None:
    the whole style image), and nothing is blended. cache: features and Grams of pictures seen before.
    """
    from styleengine.engine.losses import blend_grams, region_grams

    def features(image: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        if cache is None:
            return step.features(image, layers)
        return cache.get(step, "features", layers, image, lambda: step.features(image, layers))

    def grams(image: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        if cache is None:
            return step.grams(image, layers)
        return cache.get(step, "grams", layers, image, lambda: step.grams(image, layers))

    targets = Targets()
    if content is not None and loss.content_layers:
        targets.content = features(content, list(loss.content_layers))
    if loss.style_layers and masks is not None:
        if len(styles) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} regions for {len(styles)} style images")
        targets.masks = masks
        targets.region_grams = region_grams([features(s, list(loss.style_layers)) for s in styles],
                                            style_masks or [None] * len(styles))
    elif loss.style_layers:
        if not styles:
            raise ConfigError("style layers are set but no style image was given")
        grams_of: list[dict[str, torch.Tensor]] = []
        positions: list[int] = []
        for style in styles:
            grams_of.append(grams(style, list(loss.style_layers)))  # a tiled step sums them tile by tile
            positions.append(style.shape[2] * style.shape[3])
        if output_positions is None:
            output_positions = content.shape[2] * content.shape[3] if content is not None else positions[0]
        targets.grams = blend_grams(grams_of, positions, output_positions, blend)
    return targets
