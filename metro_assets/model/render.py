"""Draw a predicted mesh over its input image with the weak-perspective camera (PIL only, no OpenGL).

Projection as upstream's demos: x2d = s * (X_xy + (tx, ty)) in the crop's
normalised [-1, 1] frame.  Faces are painted back to front (painter's
algorithm) with two-sided Lambert shading; the picture is the input and the
overlay side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from metro_assets.model.image import _pil

MESH_RGB = np.array([150, 190, 235], dtype=np.float32)


def project(vertices: np.ndarray, cam: np.ndarray, size: int) -> np.ndarray:
    s, tx, ty = (float(c) for c in np.asarray(cam).reshape(-1)[:3])
    xy = s * (vertices[:, :2] + np.array([tx, ty]))
    return (xy + 1.0) * 0.5 * size


def render_overlay(rgb: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cam: np.ndarray, path: Path,
                   *, scale: int = 2, alpha: float = 0.85) -> Tuple[int, int]:
    """Write a PNG [input | mesh over input]; returns its (width, height)."""
    from metro_assets.store import atomic_write_bytes

    Image = _pil()
    from PIL import ImageDraw

    h, w = rgb.shape[:2]
    size = w * scale
    base = Image.fromarray(np.ascontiguousarray(rgb)).resize((size, h * scale), Image.BILINEAR)
    # the overlay's background is faded so the mesh stands out (the left panel keeps the original)
    faded = Image.blend(base, Image.new("RGB", base.size, (255, 255, 255)), 0.55)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    pts = project(v, cam, size)
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    shade = np.abs(normals[:, 2]) / np.where(norm > 0, norm, 1.0)
    colors = np.clip(MESH_RGB * (0.35 + 0.65 * shade[:, None]), 0, 255).astype(np.uint8)
    order = np.argsort(-tri[:, :, 2].mean(1))       # farthest (largest z) first
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    a = int(255 * alpha)
    finite = np.isfinite(pts).all(1)
    for i in order:
        a_, b_, c_ = f[i]
        if not (finite[a_] and finite[b_] and finite[c_]):
            continue
        r, g, b = colors[i]
        draw.polygon([tuple(pts[a_]), tuple(pts[b_]), tuple(pts[c_])], fill=(int(r), int(g), int(b), a))
    overlay = Image.alpha_composite(faded.convert("RGBA"), layer).convert("RGB")
    canvas = Image.new("RGB", (base.width * 2, base.height), (255, 255, 255))
    canvas.paste(base, (0, 0))
    canvas.paste(overlay, (base.width, 0))
    import io

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue(), durable=False)
    return canvas.size
