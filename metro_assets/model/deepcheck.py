"""Deep structural check of a checkpoint for ``verify --deep``.

Reads only the pickle's metadata: tensors are loaded onto the meta device
(no weight bytes in memory), always with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

from metro_assets.errors import LoadError, UsageError
from metro_assets.model.checkpoint import LoadReport, check_state_dict, read_state_dict, strip_prefix

EXPECTED = {"metro-body": ("body", None), "metro-hand": ("hand", None),
            "hrnet-w64": ("hrnet", "hrnet-w64"), "hrnet-w40": ("hrnet", "hrnet-w40")}


def check_checkpoint(path: Path, expected: str) -> LoadReport:
    """Compare a checkpoint's keys/shapes with the spec.  Raises LoadError naming the problem."""
    if expected not in EXPECTED:
        raise UsageError(f"Unknown deep-check kind {expected!r}", expected=", ".join(EXPECTED), got=repr(expected))
    kind, variant = EXPECTED[expected]
    path = Path(path)
    sd, fmt = read_state_dict(path, map_location="meta")
    sd, stripped = strip_prefix(sd)
    report = check_state_dict(sd, expect_kind=kind, path=path, fmt=fmt, stripped=stripped)
    if variant is not None and report.variant != variant:
        raise LoadError(f"{path.name} is the {report.variant} HRNet, not {variant}", expected=variant,
                        got=report.variant, next_command=f"metro-assets fetch {variant} --mirror BASE")
    return report
