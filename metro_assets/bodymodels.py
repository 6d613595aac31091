"""SMPL and MANO body models: what a valid file looks like, and which one it is.

:func:`inspect_bytes` loads a candidate through the restricted loader
(:mod:`metro_assets.safe_pickle`), checks its structure against the official
layout (:data:`SMPL` / :data:`MANO`) and classifies it:

* SMPL gender comes from the file's own metadata (``pose_training_info
  ['gender']``, present in the official neutral, female and male files),
  else from the file name.
* MANO side comes from geometry.  MANO_LEFT is MANO_RIGHT mirrored in x (faces
  reversed), so no single coordinate sign is a reliable tell (the template may
  sit anywhere and point anywhere), and the official left file even keeps the
  right's ``shapedirs`` x sign.  The joints' *chirality* is rotation-invariant
  and flips under a mirror: with ``d`` = wrist -> finger knuckles, ``a`` =
  pinky -> index knuckle and ``t`` = wrist -> thumb, ``(d x a) . t`` is
  negative for a right hand and positive for a left one (checked on the
  published MANO_RIGHT joints: -0.28 normalised).  Near zero it is undecided
  and the file name decides.

:func:`clean_bytes` writes a chumpy-free copy: same keys, same order, plain
numpy / scipy values, in the same Python-2-compatible protocol-2 format, so
upstream METRO, smplx and Python 2 tools all read it without chumpy.
"""
from __future__ import annotations

import pickletools
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from metro_assets.errors import StructuralError
from metro_assets.safe_pickle import dumps_py2, load_body_model, loads_restricted

__all__ = ["ModelSpec", "SMPL", "MANO", "BodyModelInfo", "inspect_bytes", "inspect_file", "validate",
           "classify", "uses_chumpy", "clean_bytes", "ASSET_VARIANTS", "variant_from_name", "hand_chirality",
           "looks_like_pickle", "inspect_model", "model_kind"]


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    vertices: int
    faces: int
    joints: int
    shape_components: int
    extra: Mapping[str, Tuple[Optional[int], ...]] = field(default_factory=dict)  # None = any size

    def shapes(self) -> Dict[str, Tuple[Optional[int], ...]]:
        v, j = self.vertices, self.joints
        out: Dict[str, Tuple[Optional[int], ...]] = {
            "v_template": (v, 3),
            "f": (self.faces, 3),
            "shapedirs": (v, 3, self.shape_components),
            "posedirs": (v, 3, (j - 1) * 9),
            "J_regressor": (j, v),
            "weights": (v, j),
            "kintree_table": (2, j),
        }
        out.update(self.extra)
        return out


SMPL = ModelSpec("smpl", 6890, 13776, 24, 10)
MANO = ModelSpec("mano", 778, 1538, 16, 10, {"hands_components": (45, 45), "hands_mean": (45,),
                                             "hands_coeffs": (None, 45)})
SPECS = {"smpl": SMPL, "mano": MANO}

# Catalog asset id -> (kind, variant).  Other variants (MANO left) have no METRO path.
ASSET_VARIANTS: Dict[str, Tuple[str, str]] = {
    "smpl-neutral": ("smpl", "neutral"),
    "smpl-female": ("smpl", "female"),
    "smpl-male": ("smpl", "male"),
    "mano-right": ("mano", "right"),
}

# File names (lower-case) people have for each variant: official, METRO, smplx layout.
_NAME_VARIANTS = [
    (re.compile(r"^basicmodel_neutral_lbs_10_207_0_v1\.0\.0\.pkl$|^smpl_neutral\.pkl$|neutral"), ("smpl", "neutral")),
    (re.compile(r"^basicmodel_f_lbs_10_207_0_v1\.0\.0\.pkl$|^smpl_female\.pkl$|female"), ("smpl", "female")),
    (re.compile(r"^basicmodel_m_lbs_10_207_0_v1\.0\.0\.pkl$|^smpl_male\.pkl$|(^|[_.])male"), ("smpl", "male")),
    (re.compile(r"mano_right|right"), ("mano", "right")),
    (re.compile(r"mano_left|left"), ("mano", "left")),
]

CHIRALITY_THRESHOLD = 0.02


def variant_from_name(name: str) -> Optional[Tuple[str, str]]:
    """(kind, variant) suggested by a file name, or None."""
    base = PurePosixPath(name).name.lower()
    if base.startswith("smplh") or base.startswith("smplx"):
        return None
    for rx, kv in _NAME_VARIANTS:
        if rx.search(base):
            return kv
    return None


@dataclass(frozen=True)
class BodyModelInfo:
    kind: str                 # smpl | mano
    variant: str              # neutral | female | male | right | left | unknown
    variant_from: str         # metadata | chirality | name | unknown
    chumpy: bool              # the file names chumpy globals (needs chumpy without our loader)
    keys: Tuple[str, ...] = ()

    @property
    def asset_id(self) -> Optional[str]:
        for aid, kv in ASSET_VARIANTS.items():
            if kv == (self.kind, self.variant):
                return aid
        return None

    def describe(self) -> str:
        label = {"smpl": "SMPL", "mano": "MANO"}[self.kind]
        return f"{label} {self.variant} (from {self.variant_from})" + (", chumpy" if self.chumpy else ", clean")


def _shape_of(value: Any) -> Optional[Tuple[int, ...]]:
    shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _fmt(shape: Tuple[Optional[int], ...]) -> str:
    return "(" + ",".join("N" if s is None else str(s) for s in shape) + ")"


def model_kind(model: Mapping[str, Any], source: str = "") -> str:
    """smpl or mano, from the template's vertex count."""
    shape = _shape_of(model.get("v_template"))
    for spec in SPECS.values():
        if shape == (spec.vertices, 3):
            return spec.kind
    got = "no v_template" if shape is None else f"v_template {_fmt(shape)}"
    raise StructuralError(f"{source or 'File'} is not an SMPL or MANO model", expected="v_template (6890,3) for SMPL or (778,3) for MANO",
                          got=got, did="Skipped it")


def validate(model: Mapping[str, Any], *, source: str = "", kind: Optional[str] = None) -> str:
    """Check the official layout; return the kind.  Raises StructuralError listing every mismatch."""
    kind = kind or model_kind(model, source)
    spec = SPECS[kind]
    label = kind.upper()
    expected, got = [], []
    for key, want in spec.shapes().items():
        have = _shape_of(model.get(key))
        ok = have is not None and len(have) == len(want) and all(w is None or w == h for w, h in zip(want, have))
        if not ok:
            expected.append(f"{key} {_fmt(want)}")
            got.append(f"{key} " + ("missing" if key not in model else
                                    _fmt(have) if have is not None else type(model[key]).__name__))
    if not got:
        problems = _value_problems(model, spec)
        if problems:
            raise StructuralError(f"{source or 'File'} is a damaged {label} model", expected="finite values and valid indices",
                                  got="; ".join(problems), did="Skipped it")
        return kind
    hint = ""
    if any(g.startswith("shapedirs") for g in got) and len(got) == 1:
        hint = (f"; METRO needs the {spec.shape_components}-component {label} release"
                + (" (SMPL 1.0.0 / SMPLify, not SMPL 1.1 with 300 shape components)" if kind == "smpl" else ""))
    raise StructuralError(f"{source or 'File'} does not have the {label} layout METRO expects{hint}",
                          expected=", ".join(expected), got=", ".join(got), did="Skipped it")


def _value_problems(model: Mapping[str, Any], spec: ModelSpec) -> list:
    problems = []
    for key in ("v_template", "shapedirs", "posedirs", "weights"):
        arr = np.asarray(model[key])
        if arr.dtype.kind not in "fiu":
            problems.append(f"{key} has dtype {arr.dtype}")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{key} has NaN or infinite values")
    f = np.asarray(model["f"])
    if f.dtype.kind not in "iu" or (f.size and (f.min() < 0 or f.max() >= spec.vertices)):
        problems.append(f"faces index outside 0..{spec.vertices - 1}")
    return problems


def hand_chirality(joints: np.ndarray) -> float:
    """Normalised (d x a) . t over MANO's 16 joints: < 0 right hand, > 0 left hand (see module doc)."""
    j = np.asarray(joints, dtype=np.float64)
    d = j[[1, 4, 7, 10]].mean(axis=0) - j[0]
    a = j[1] - j[7]
    t = j[13:16].mean(axis=0) - j[0]
    n = np.cross(d, a)
    denom = float(np.linalg.norm(n) * np.linalg.norm(t))
    return float(np.dot(n, t) / denom) if denom > 0 else 0.0


def _joints(model: Mapping[str, Any]) -> np.ndarray:
    try:
        return np.asarray(model["J_regressor"] @ np.asarray(model["v_template"]))
    except Exception:  # a regressor we cannot apply: fall back on the stored joints
        return np.asarray(model["J"])


def classify(model: Mapping[str, Any], kind: str, name: str = "") -> Tuple[str, str]:
    """(variant, how) for a validated model; how is metadata | chirality | name | unknown."""
    by_name = variant_from_name(name) if name else None
    if kind == "smpl":
        info = model.get("pose_training_info")
        gender = (info.get("gender") if isinstance(info, dict) else None) or model.get("gender")
        if isinstance(gender, bytes):
            gender = gender.decode("latin1")
        if isinstance(gender, str) and gender.lower() in ("neutral", "female", "male"):
            return gender.lower(), "metadata"
    else:
        c = hand_chirality(_joints(model))
        if abs(c) >= CHIRALITY_THRESHOLD:
            return ("right" if c < 0 else "left"), "chirality"
    if by_name and by_name[0] == kind:
        return by_name[1], "name"
    return "unknown", "unknown"


def uses_chumpy(data: bytes) -> bool:
    """Whether a pickle names chumpy globals (cheap: opcodes only, nothing loaded)."""
    if b"chumpy" not in data:
        return False
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and str(arg).startswith("chumpy"):
                return True
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and str(arg).startswith("chumpy"):
                return True
    except Exception:
        return True
    return False


def looks_like_pickle(data: bytes) -> bool:
    return len(data) > 2 and data[:1] == b"\x80" and data[1] in (2, 3, 4, 5)


def inspect_model(model: Mapping[str, Any], *, name: str = "", chumpy: bool = False, source: str = "") -> BodyModelInfo:
    kind = validate(model, source=source or name)
    variant, how = classify(model, kind, name)
    return BodyModelInfo(kind, variant, how, chumpy, tuple(str(k) for k in model))


def inspect_bytes(data: bytes, *, name: str = "", source: str = "") -> Tuple[BodyModelInfo, Dict[str, Any]]:
    """Load (safely), validate and classify a candidate.  Returns (info, model).

    Raises StructuralError (not a model / wrong layout) or LoadError (refused pickle).
    """
    where = source or name or "file"
    if not looks_like_pickle(data):
        what = ("a macOS resource fork (AppleDouble), not a model" if data[:4] == b"\x00\x05\x16\x07"
                else "empty" if not data else "not a pickle")
        raise StructuralError(f"{where} is {what}", expected="a protocol-2 pickle", got=f"{len(data)} bytes", did="Skipped it")
    model = loads_restricted(data, what=where)
    if not isinstance(model, dict):
        raise StructuralError(f"{where} does not hold a body model", expected="a pickled dict", got=type(model).__name__,
                              did="Skipped it")
    return inspect_model(model, name=name, chumpy=uses_chumpy(data), source=where), model


def inspect_file(path, *, expect_asset: Optional[str] = None) -> BodyModelInfo:
    """Validate a placed file (used by checks / run-check); ``expect_asset`` also checks the variant."""
    model = load_body_model(path)
    info = inspect_model(model, name=str(path), source=str(path))
    if expect_asset is not None:
        want = ASSET_VARIANTS.get(expect_asset)
        if want and (info.kind, info.variant) != want and info.variant != "unknown":
            raise StructuralError(f"{path} is the wrong body model for {expect_asset}",
                                  expected=f"{want[0].upper()} {want[1]}", got=info.describe(),
                                  next_command="metro-assets import <the official archive>")
    return info


def clean_bytes(model: Mapping[str, Any]) -> bytes:
    """A chumpy-free copy of a loaded model (same keys and order; plain numpy/scipy)."""
    return dumps_py2(dict(model))



def deep_check(path, check: str) -> "BodyModelInfo":
    """The ``verify --deep`` hook (checks.DEEP_CHECKS): ``check`` is ``smpl`` or ``mano``."""
    info = inspect_file(path)
    if info.kind != check:
        raise StructuralError(f"{path} is not a {check.upper()} model", expected=check.upper(), got=info.describe(),
                              next_command="metro-assets import <the official archive>")
    return info
