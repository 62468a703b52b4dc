"""The loop people run today: Gatys style transfer as popular PyTorch implementations write it.

The PyTorch tutorial ("Neural Transfer Using PyTorch") and neural-style-pt
build one nn.Sequential: a normalisation module, VGG's layers with in-place
ReLUs, and loss modules inserted after the loss layers, each remembering its
loss in `self.loss` and passing its input on. One
`torch.optim.LBFGS(max_iter=N, history_size=100, tolerance_grad=-1,
tolerance_change=-1)` call runs the whole optimisation; its closure zeroes
the gradient, runs the model, sums the modules' losses and calls backward.
On CUDA they set `cudnn.benchmark = True`.

This is the baseline of `styleengine bench --loop`: written as such code is
(no tricks against it, none for it), with the paper's loss so its numbers
equal the engine's (tests/test_naive.py checks the losses of the first
iterations). It shares nothing with the engine but the weight loading.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from styleengine.model.vgg import layer_table
from styleengine.model.weights import Weights


class Normalization(nn.Module):
    """RGB in [0, 1] -> the network's input convention (channel order, range, mean, std)."""

    def __init__(self, weights: Weights):
        super().__init__()
        scale, shift = weights.convention.scale_shift()
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1))
        self.perm = weights.convention.rgb_permutation()

    def forward(self, x):
        return (x * self.scale + self.shift)[:, self.perm]


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, weight: float):
        super().__init__()
        self.target, self.weight, self.loss = target.detach(), weight, None

    def forward(self, x):
        self.loss = self.weight * 0.5 * (x - self.target).pow(2).sum()
        return x


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    _, c, h, w = x.shape
    f = x.view(c, h * w)
    return f @ f.t()


class StyleLoss(nn.Module):
    def __init__(self, target_gram: torch.Tensor, weight: float):
        super().__init__()
        self.target, self.weight, self.loss = target_gram.detach(), weight, None

    def forward(self, x):
        _, c, h, w = x.shape
        self.loss = self.weight * (gram_matrix(x) - self.target).pow(2).sum() / (4.0 * c**2 * (h * w) ** 2)
        return x


def build_model(weights: Weights, pooling: str, content_layers, style_layers, content: torch.Tensor | None,
                style: torch.Tensor, content_weight: float, style_weight: float, device: torch.device):
    """The tutorial's get_style_model_and_losses: layers in order, loss modules after the loss layers,
    targets taken by running the model built so far, everything after the last loss layer cut."""
    model = nn.Sequential(Normalization(weights)).to(device)
    content_losses, style_losses = [], []
    last = max(i for i, layer in enumerate(layer_table(weights.model))
               if layer.name in set(content_layers) | set(style_layers))
    for layer in layer_table(weights.model)[: last + 1]:
        if layer.kind == "conv":
            # the loaded network's own tensors, as the tutorial adds the loaded VGG's modules (one copy)
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1)
            conv.weight = nn.Parameter(weights.state[f"features.{layer.index}.weight"], requires_grad=False)
            conv.bias = nn.Parameter(weights.state[f"features.{layer.index}.bias"], requires_grad=False)
            module: nn.Module = conv
        elif layer.kind == "relu":
            module = nn.ReLU(inplace=True)
        else:
            module = nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2)
        model.add_module(layer.name, module.to(device))
        if layer.name in content_layers and content is not None:
            with torch.no_grad():
                target = model(content.to(device)).clone()
            loss: nn.Module = ContentLoss(target, content_weight)
            model.add_module(f"content_loss_{layer.name}", loss)
            content_losses.append(loss)
        if layer.name in style_layers:
            w = style_weight / len(style_layers)  # the paper's w_l = 1 / number of style layers
            with torch.no_grad():
                target = gram_matrix(model(style.to(device)))
            loss = StyleLoss(target, w)
            model.add_module(f"style_loss_{layer.name}", loss)
            style_losses.append(loss)
    model.requires_grad_(False)
    return model.eval(), content_losses, style_losses


def prepare(weights: Weights, init: torch.Tensor, content: torch.Tensor | None, style: torch.Tensor, *,
            content_layers=("relu4_2",), style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
            content_weight: float = 1.0, style_weight: float = 1e5, pooling: str = "avg", device: str = "cpu"):
    """(image, closure): the model with its loss modules, the image to optimise and the tutorial's closure."""
    device_t = torch.device(device)
    if device_t.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, content_losses, style_losses = build_model(
        weights, pooling, content_layers, style_layers, content, style, content_weight, style_weight, device_t)
    img = init.detach().clone().to(device_t).requires_grad_(True)

    def closure():
        if img.grad is not None:
            img.grad.zero_()  # optimizer.zero_grad() on the one parameter
        model(img)
        loss = sum(m.loss for m in content_losses) + sum(m.loss for m in style_losses)
        loss.backward()
        return loss

    return img, closure


def run(weights: Weights, init: torch.Tensor, content: torch.Tensor | None, style: torch.Tensor, *,
        iterations: int, history: int = 100, after=None, **loss) -> tuple[torch.Tensor, list[float], list[float]]:
    """The whole optimisation; returns (image, the loss of each evaluation, the time each iteration took).

    Times are host timestamps between closure calls: torch's LBFGS reads the loss every iteration
    (`float(loss)`), so on a GPU each one has finished by then. `loss`: prepare()'s keywords.
    after(n): called (untimed) once n evaluations are done, for n = 0 .. iterations.
    """
    img, closure = prepare(weights, init, content, style, **loss)
    optimizer = torch.optim.LBFGS([img], lr=1.0, max_iter=iterations, history_size=history,
                                  tolerance_grad=-1.0, tolerance_change=-1.0)
    losses: list[float] = []
    stamps: list[float] = [time.perf_counter()]

    def timed_closure():
        loss = closure()
        losses.append(loss.item())  # what the popular loops print; LBFGS reads it anyway
        if after is not None:
            after(len(losses))
        stamps.append(time.perf_counter())
        return loss

    if after is not None:
        after(0)
        stamps[0] = time.perf_counter()
    if iterations:
        optimizer.step(timed_closure)
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    return img.detach(), losses, seconds
