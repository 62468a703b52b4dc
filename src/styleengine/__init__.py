"""styleengine: Gatys neural style transfer with the loss-and-gradient step in
PyTorch, ONNX Runtime or TensorRT."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from styleengine.runtime import no_onnxruntime_telemetry

if TYPE_CHECKING:
    from PIL import Image

__version__ = "0.1.0"

no_onnxruntime_telemetry()  # before any module of ours imports onnxruntime


def stylise(content: Any, style_or_styles: Any, **settings: Any) -> Image.Image:
    """Stylise `content` with one style image or a list; returns a PIL image (styleengine.api.stylise).

    Imports the engine (torch) on the first call, not at `import styleengine`.
    """
    from styleengine.api import stylise as run

    return run(content, style_or_styles, **settings)
