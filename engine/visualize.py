"""Class visualisation (Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks", 2014): the
image that maximises one class's score S_c, from the mean image, under an L2 penalty.

Their objective is S_c(I) - lambda ||I||^2 with I the mean-subtracted image;
here the penalty is a mean over pixels (the same weight at every size) and
a smoothness term (engine/losses.py's tv_loss, Mahendran & Vedaldi's prior;
not in Simonyan et al.) is added. The same loop as style transfer runs it
(engine/loop.py), on a step whose loss is -S_c + penalties.
"""
from __future__ import annotations

import torch

from styleengine.engine.losses import tv_loss
from styleengine.engine.steps import StepBase, StepResult, build_network, preprocess_params, resolve_device
from styleengine.errors import ConfigError
from styleengine.model.classifier import Classifier
from styleengine.model.weights import TORCHVISION, Weights

IMAGENET_MEAN_RGB = TORCHVISION.mean  # the start: the mean image (Simonyan et al.'s zero image)


class ClassScoreStep(StepBase):
    """loss = -S_c(x) + l2_weight * mean((x - mean)^2) + tv_weight * mean squared neighbour difference."""

    def __init__(self, weights: Weights, classifier: Classifier, target: int, *, l2_weight: float,
                 tv_weight: float, device: str = "cpu"):
        if not 0 <= target < classifier.classes:
            raise ConfigError(f"class {target} is not one of the classifier's 0-{classifier.classes - 1}")
        last, _ = classifier.layers[-1]
        if not bool(torch.any(last[target] != 0)):  # ascent would write the start's noise and call it the class
            raise ConfigError(f"class {target}'s weights in the classifier's last layer are all zero: its score does "
                              f"not depend on the picture, so there is nothing to ascend")
        self.device = resolve_device(device)
        # the classifier was trained on max pooling, so the features must be too
        self.net = build_network(weights, ["pool5"], "max").to(self.device)
        self.classifier = Classifier([(w.to(self.device), b.to(self.device)) for w, b in classifier.layers],
                                     classifier.pool, classifier.source)
        self.scale, self.shift, self.perm = preprocess_params(weights.convention, self.device)
        self.target, self.l2_weight, self.tv_weight = target, l2_weight, tv_weight
        self.mean = torch.tensor(IMAGENET_MEAN_RGB, device=self.device).view(1, 3, 1, 1)

    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] -> (1, classes) scores."""
        x = (image * self.scale + self.shift)[:, self.perm]
        return self.classifier(self.net(x, ["pool5"])["pool5"])

    def set_targets(self, targets) -> None:  # nothing to match: the class is the target
        pass

    def __call__(self, image: torch.Tensor) -> StepResult:
        x = image.detach().to(self.device).requires_grad_(True)
        with torch.enable_grad():
            score = self.scores(x)[0, self.target]
            l2 = self.l2_weight * torch.mean((x - self.mean) ** 2)
            height, width = x.shape[2:]
            tv = self.tv_weight * tv_loss(x) / (3 * height * width) if self.tv_weight else x.new_zeros(())
            loss = -score + l2 + tv
            (grad,) = torch.autograd.grad(loss, x)
        # the loop's four terms: the total, -S_c where a style run has its content term, the L2 penalty, TV
        return StepResult(torch.stack([loss, -score, l2, tv]).detach().float(), grad)

    def close(self) -> None:
        self.net = None  # type: ignore[assignment]


def mean_image(height: int, width: int) -> torch.Tensor:
    return torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1).expand(1, 3, height, width).clone()
