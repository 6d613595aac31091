"""The golden weight/input formula (shared/spec/golden/GOLDEN.md section 2, version 1).

Bit-reproducible pseudo-random weights from an integer hash, so a 1 GB
checkpoint never has to be shipped: tests (and anyone checking this package)
generate it in memory and compare the forward pass with the stored upstream
outputs.  Adapted from the reference code in GOLDEN.md section 2.5.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

M32 = 0xFFFFFFFF
FORMULA_VERSION = 1


def mix32(x):
    """Integer hash; x is a Python int or an int64 array with 0 <= x < 2**32."""
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x045D9F3B) & M32
    return (x >> 16) ^ x


def golden_uniform(stream: int, n: int) -> np.ndarray:
    """n exact multiples of 2**-23 in [-1, 1), as float64."""
    i = np.arange(n, dtype=np.int64)
    h = mix32((i + mix32(stream + 1)) & M32)
    return ((h >> 8) - 2**23).astype(np.float64) / 2**23


def golden_rule(key: str, shape: Tuple[int, ...], keyset) -> Optional[Tuple[float, float]]:
    """(centre, amplitude) for one state-dict entry, or None for num_batches_tracked."""
    module, leaf = key.rsplit(".", 1)
    last = module.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return None
    if leaf == "running_mean":
        return 0.0, 0.05
    if leaf == "running_var":
        return 1.0, 0.25
    if module + ".running_mean" in keyset:  # BatchNorm2d affine
        return (1.0, 0.1) if leaf == "weight" else (0.0, 0.05)
    if last == "LayerNorm":
        return (1.0, 0.1) if leaf == "weight" else (0.0, 0.05)
    if last.endswith("_embeddings"):
        return 0.0, 0.05
    if leaf == "bias":
        return 0.0, 0.02
    if module.endswith(("attention.self.query", "attention.self.key")):
        gain = 1.5
    elif last in ("cls_head", "residual"):
        gain = 0.4
    elif last == "img_embedding":
        gain = 0.05
    elif len(shape) == 4:
        gain = 0.6
    else:
        gain = 1.0
    return 0.0, gain * math.sqrt(3.0 / math.prod(shape[1:]))


def golden_arrays(entries: Iterable[Tuple[str, Tuple[int, ...]]]) -> Dict[str, np.ndarray]:
    """The formula state dict for an ordered (key, shape) list, as numpy arrays."""
    entries = list(entries)
    keyset = {k for k, _ in entries}
    out: Dict[str, np.ndarray] = {}
    for k, (key, shape) in enumerate(entries):
        rule = golden_rule(key, shape, keyset)
        if rule is None:
            out[key] = np.zeros(shape, dtype=np.int64)
            continue
        centre, amp = rule
        amp = float(np.float32(amp))  # one rounding of the amplitude
        u = golden_uniform(k, math.prod(shape))
        out[key] = (centre + amp * u).astype(np.float32).reshape(shape)
    return out


def golden_state_dict(variant: str = "body-w64"):
    """Torch state dict of the formula weights for a variant (key order from the meta-built network)."""
    import torch

    from metro_assets.model.checkpoint import expected_signature

    arrays = golden_arrays((k, s) for k, s, _ in expected_signature(variant))
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def golden_inputs() -> Dict[str, np.ndarray]:
    """The image and both templates (GOLDEN.md section 3)."""
    def scaled(stream, rows, scale):
        s = np.array([float(np.float32(x)) for x in scale])
        return (golden_uniform(stream, rows * 3).reshape(rows, 3) * s).astype(np.float32)

    image = (2.0 * golden_uniform(1000000, 3 * 224 * 224)).astype(np.float32)
    return {
        "image": image.reshape(1, 3, 224, 224),
        "body_template_vertices": scaled(1000001, 6890, (0.25, 0.8, 0.12)),
        "hand_template_vertices": scaled(1000002, 778, (70.0, 70.0, 25.0)),
        "hand_template_joints": scaled(1000003, 21, (70.0, 70.0, 25.0)),
    }


def tensors_sha256(state_dict) -> str:
    """sha256 of all tensors' raw bytes in key order (GOLDEN.md section 2.6)."""
    import hashlib

    h = hashlib.sha256()
    for v in state_dict.values():
        arr = v.numpy() if hasattr(v, "numpy") else v
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
