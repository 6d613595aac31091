"""Wavefront OBJ output."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write vertices (V,3) and 0-based triangle faces (F,3) to ``path``; atomic replace."""
    from metro_assets.store import atomic_write_bytes

    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index {f.min()}..{f.max()} outside {len(v)} vertices")
    buf = io.StringIO()
    buf.write(f"# metro-assets run-check mesh: {len(v)} vertices, {len(f)} faces\n")
    np.savetxt(buf, v, fmt="v %.6f %.6f %.6f")
    np.savetxt(buf, f + 1, fmt="f %d %d %d")
    atomic_write_bytes(Path(path), buf.getvalue().encode(), durable=False)
    return Path(path)
