"""Issue 23, stop 41: probe 34's findings (on d8f39d4)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "I;16"])
def test_a_pngs_transparent_key_is_transparent(tmp_path, mode):
    """A PNG's tRNS chunk (one grey level or colour that is transparent) was honoured for palette images only: a
    greyscale mask's transparent half read as its grey, and two such halves were refused as an overlap; a
    content's transparent pixels ran as black (probe 34a). Each mode reads as its RGBA twin."""
    import numpy as np
    from PIL import Image

    from styleengine.engine import images

    half = np.zeros((40, 48), bool)
    half[:, :24] = True
    if mode == "1":
        picture, key = Image.fromarray(half).convert("1"), 0
    elif mode == "L":
        picture, key = Image.fromarray(np.where(half, 255, 200).astype(np.uint8)), 200
    elif mode == "RGB":
        picture, key = Image.fromarray(np.where(half[..., None], 255, [200, 10, 20]).astype(np.uint8)), (200, 10, 20)
    else:
        picture, key = Image.fromarray(np.where(half, 65535, 51400).astype(np.uint16)), 51400
    picture.save(tmp_path / "k.png", transparency=key)
    assert Image.open(tmp_path / "k.png").mode == mode
    for backdrop in (0.0, 1.0):  # a mask's, a picture's
        read = images.load_image(tmp_path / "k.png", backdrop=backdrop)
        assert np.array_equal(read[:, :24], np.ones((40, 24, 3), np.float32)), mode
        assert np.array_equal(read[:, 24:], np.full((40, 24, 3), backdrop, np.float32)), mode

