"""styleengine: Gatys neural style transfer with the loss-and-gradient step in
PyTorch, ONNX Runtime or TensorRT."""

__version__ = "0.1.0"


def stylise(content, style_or_styles, **settings):  # type: ignore[no-untyped-def]  # styleengine.api's signature
    """Stylise `content` with one style image or a list; returns a PIL image (styleengine.api.stylise).

    Imports the engine (torch) on the first call, not at `import styleengine`.
    """
    from styleengine.api import stylise as run

    return run(content, style_or_styles, **settings)
