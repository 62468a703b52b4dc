"""The model: VGG layer tables, the torch network derived from them, and weight loading."""
