"""styleengine: Gatys neural style transfer with the loss-and-gradient step in
PyTorch, ONNX Runtime or TensorRT."""

__version__ = "0.1.0"
