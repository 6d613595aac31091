"""Network input: an RGB image preprocessed as upstream's demos do, or the built-in input."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from metro_assets.errors import LoadError, MissingDependency

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency("Reading or drawing images needs Pillow", expected="pillow installed", got="not installed",
                                next_command="pip install 'metro-assets[model]'") from None
    return Image


def load_image(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(1,3,224,224) float32 normalised input and the (224,224,3) uint8 crop it came from.

    Shorter side to 224 (bilinear), centre crop 224, [0,1], ImageNet mean/std
    (torchvision ``Resize(224)``, ``CenterCrop(224)``, ``ToTensor``, ``Normalize``).
    """
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w <= h:
                nw, nh = SIZE, int(SIZE * h / w)
            else:
                nw, nh = int(SIZE * w / h), SIZE
            im = im.resize((nw, nh), Image.BILINEAR)
            left = int(round((nw - SIZE) / 2.0))
            top = int(round((nh - SIZE) / 2.0))
            crop = np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise LoadError(f"Cannot read the image {path}", expected="an RGB image file Pillow can open",
                        got=f"{type(exc).__name__}: {exc}") from None
    x = (crop.astype(np.float32) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32), crop


def builtin_input() -> Tuple[np.ndarray, np.ndarray]:
    """The deterministic golden image (hash noise, already normalised) and an RGB view of it."""
    from metro_assets.model.golden import golden_inputs

    x = golden_inputs()["image"]
    rgb = x[0].transpose(1, 2, 0) * STD + MEAN
    return x, (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
