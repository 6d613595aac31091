"""Structural checks: is this file plausibly what its ``kind`` says?

These run on every download before it may reach a final path, and in
``verify`` for assets whose hash is unknown.  They are cheap (headers, the
zip central directory, a YAML parse) and never import torch.  Deep checks
(key/shape lists, body-model shapes) are registered in ``DEEP_CHECKS`` and
imported lazily.
"""
from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from metro_assets.errors import StructuralError

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
# torch's legacy (pre-1.6) serialization: a protocol-2 pickle of its magic number
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
PICKLE2_MAGIC = b"\x80\x02"
SNIFF_BYTES = 4096

BINARY_KINDS = ("torch-checkpoint", "torch-weights", "npy", "npz", "zip", "body-model", "tar", "dataset", "binary")
_MARKUP_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<error", b"<!--")


def looks_like_markup(head: bytes) -> bool:
    h = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return h.startswith(_MARKUP_STARTS)


def _fail(kind: str, what: str, expected: str, got: str, name: str) -> None:
    raise StructuralError(
        f"{name}: {what}", expected=expected, got=got,
        did="The bytes were not placed at the final path",
        next_command="try another source (--mirror BASE) or `metro-assets doctor` for details",
        kind=kind,
    )


def sniff(kind: str, head: bytes, *, name: str = "download", total: Optional[int] = None) -> None:
    """Check the first bytes of a body (up to SNIFF_BYTES).  Raises StructuralError."""
    if not head:
        _fail(kind, "empty body (0 bytes)", f"a non-empty {kind} file", "0 bytes", name)
    if kind in BINARY_KINDS and looks_like_markup(head[:512]):
        snippet = head[:120].decode("utf-8", "replace").replace("\n", " ")
        _fail(kind, "an HTML/XML page instead of the file (an error or login page?)", f"binary {kind} data",
              f"markup starting {snippet!r}", name)
    if kind in ("torch-checkpoint", "torch-weights"):
        if not (head.startswith(ZIP_MAGIC) or head.startswith(TORCH_LEGACY_MAGIC)):
            _fail(kind, "not a torch checkpoint", "torch zip (PK\\x03\\x04) or legacy torch pickle magic",
                  repr(head[:16]), name)
    elif kind == "npy":
        if not head.startswith(NPY_MAGIC):
            _fail(kind, "not a .npy file", "the \\x93NUMPY magic", repr(head[:8]), name)
    elif kind in ("npz", "zip"):
        if not head.startswith(ZIP_MAGIC):
            _fail(kind, f"not a {kind} archive", "zip magic PK\\x03\\x04", repr(head[:8]), name)
    elif kind == "body-model":
        if not head.startswith(PICKLE2_MAGIC):
            _fail(kind, "not a protocol-2 pickle (SMPL/MANO model files are)", "\\x80\\x02 pickle header",
                  repr(head[:8]), name)
    elif kind in ("tar", "dataset"):
        if len(head) >= 262 and head[257:262] != b"ustar":
            _fail(kind, "not a tar archive", "'ustar' magic at offset 257", repr(head[257:263]), name)


# Kinds whose whole structural check is the sniff of the first bytes: a file that
# passed ``sniff`` during its download needs no second look.
SNIFF_ONLY_KINDS = ("binary", "body-model", "tar", "dataset")


def check_file(path: Path, kind: str, *, name: Optional[str] = None) -> None:
    """Full structural check of a complete file.  Raises StructuralError."""
    name = name or Path(path).name
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    sniff(kind, head, name=name)
    if kind in ("npz", "zip"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            _fail(kind, "damaged or truncated zip", "a readable zip central directory", str(exc), name)
        if kind == "npz" and not all(n.endswith(".npy") for n in names):
            _fail(kind, "zip is not an .npz", "only .npy members", ", ".join(names[:5]), name)
    elif kind in ("torch-checkpoint", "torch-weights") and head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            _fail(kind, "damaged or truncated torch zip checkpoint", "a readable zip central directory", str(exc), name)
        if not any(n.endswith("data.pkl") for n in names):
            _fail(kind, "zip without data.pkl", "a torch.save zip archive", ", ".join(names[:5]), name)
    elif kind == "npy":
        import numpy as np

        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(f)  # header only
        except Exception as exc:  # numpy raises ValueError for bad headers
            _fail(kind, "bad .npy header", "a valid NPY header", str(exc), name)
        if dtype.hasobject:
            _fail(kind, ".npy holds pickled objects", "a plain numeric array", str(dtype), name)
        itemsize = dtype.itemsize
        count = 1
        for s in shape:
            count *= s
        size = Path(path).stat().st_size
        if size < count * itemsize:
            _fail(kind, "truncated .npy", f"at least {count * itemsize} bytes of data", f"{size} bytes in all", name)
    elif kind == "yaml":
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            _fail(kind, "not valid YAML", "a YAML document", str(exc).splitlines()[0], name)
        if not isinstance(data, dict):
            _fail(kind, "YAML is not a mapping", "a mapping at the top level", type(data).__name__, name)


# ---------------------------------------------------------------------------- deep checks
# check name -> (module, function).  The function takes (path: Path, check: str)
# and raises a MetroAssetsError (LoadError) when the file is not what it claims.
DEEP_CHECKS: Dict[str, Tuple[str, str]] = {
    "metro-body": ("metro_assets.model.deepcheck", "check_checkpoint"),
    "metro-hand": ("metro_assets.model.deepcheck", "check_checkpoint"),
    "hrnet-w64": ("metro_assets.model.deepcheck", "check_checkpoint"),
    "hrnet-w40": ("metro_assets.model.deepcheck", "check_checkpoint"),
    "smpl": ("metro_assets.bodymodels", "deep_check"),
    "mano": ("metro_assets.bodymodels", "deep_check"),
}


def deep_check(path: Path, check: str):
    """Run the registered deep check ``check`` on ``path`` (may import torch)."""
    try:
        module, func = DEEP_CHECKS[check]
    except KeyError:
        raise StructuralError(f"unknown deep check {check!r}", expected=", ".join(sorted(DEEP_CHECKS))) from None
    fn: Callable = getattr(importlib.import_module(module), func)
    return fn(Path(path), check)
