"""The VGG layer table, weight loading, ONNX step graphs and their validation."""
