"""Random-weight checkpoints of the released architecture (for demos and tests).

Values follow the golden formula's per-tensor centre/amplitude rules (so the
forward pass stays finite and mesh-sized), drawn from a seeded torch
generator instead of the integer hash: fast (about 2 s per GB).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Union

import torch

from metro_assets.model.checkpoint import expected_signature
from metro_assets.model.golden import golden_rule


def random_state_dict(variant: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    sig = expected_signature(variant)
    keyset = {k for k, _, _ in sig}
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in sig:
        rule = golden_rule(key, shape, keyset)
        if rule is None:
            out[key] = torch.zeros(shape, dtype=dtype)
            continue
        centre, amp = rule
        t = torch.empty(shape, dtype=torch.float32)
        t.uniform_(-amp, amp, generator=gen)
        if centre:
            t.add_(centre)
        out[key] = t
    return out


def write_release_checkpoint(path: Union[str, Path], kind: str = "body", arch: str = "w64", legacy: bool = True,
                             seed: int = 0) -> Path:
    """Write a random-weight ``{kind}-{arch}`` checkpoint as upstream saved it (legacy format by default).

    The file appears atomically (temp file + ``os.replace``).  ``arch`` may be
    ``w64``, ``w40`` or ``tiny`` (tests).
    """
    path = Path(path)
    sd = random_state_dict(f"{kind}-{arch}", seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(sd, tmp, _use_new_zipfile_serialization=not legacy)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; a checkpoint is not a secret
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


__all__ = ["random_state_dict", "write_release_checkpoint"]
