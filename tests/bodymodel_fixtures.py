"""Small but structurally faithful SMPL / MANO stand-ins for tests.

They hold no SMPL or MANO data: values are seeded random numbers with the
official shapes, dtypes, key order, containers and pickle opcodes
(protocol 2, Python-2 BINSTRING strings, ``numpy.core.multiarray``,
``scipy.sparse.csc.csc_matrix``, ``__builtin__.set``, ``chumpy.ch.Ch`` and,
for MANO, ``chumpy.reordering.Select`` over a (778,3,20) Ch).  chumpy is not
needed to write them: chumpy objects are emitted as GLOBAL + NEWOBJ + state.

The generator is the demo's (:mod:`metro_assets.demo.samples`) with the
"scatter" layout (vertices around the joints, an anatomical right hand, random
faces: no mesh to build) and archives without the SYNTHETIC.txt note.

Other tests import these helpers::

    from bodymodel_fixtures import write_smpl_pickle, write_mano_pickle, write_official_zips

(tests/conftest.py puts tests/ on sys.path.)
Writing a full SMPL file costs ~0.5 s (posedirs alone is 34 MB); the
session-scoped pytest fixture :func:`bodymodel_files` builds every variant
once (import it into a test module to use it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from metro_assets.demo import samples as S
from metro_assets.demo.samples import (APPLEDOUBLE, FEMALE_MEMBER, MALE_MEMBER, MANO_F, MANO_J,  # noqa: F401
                                       MANO_LEFT_MEMBER, MANO_PARENTS, MANO_RIGHT_MEMBER, MANO_V, MANO_ZIP,
                                       NEUTRAL_MEMBER, SEEDS, SMPL_F, SMPL_J, SMPL_PARENTS, SMPL_V, SMPL_ZIP,
                                       SMPLIFY_ZIP)

LAYOUT = "scatter"


def smpl_model(gender: str = "neutral", *, shape_components: int = 10, seed: Optional[int] = None) -> Dict[str, Any]:
    """Plain values of an SMPL model (official key order)."""
    return S.smpl_model(gender, shape_components=shape_components, seed=seed, layout=LAYOUT)


def mano_model(side: str = "right", *, shape_components: int = 10, seed: Optional[int] = None) -> Dict[str, Any]:
    """Plain values of a MANO model.  The left hand mirrors the right in x (faces
    reversed, hand pose y/z negated) but keeps the right's shapedirs x sign, as
    the official MANO_LEFT does."""
    return S.mano_model(side, shape_components=shape_components, seed=seed, layout=LAYOUT)


def smpl_bytes(gender: str = "neutral", *, chumpy: bool = True, **kw: Any) -> bytes:
    return S.smpl_bytes(gender, chumpy=chumpy, layout=LAYOUT, **kw)


def mano_bytes(side: str = "right", *, chumpy: bool = True, **kw: Any) -> bytes:
    return S.mano_bytes(side, chumpy=chumpy, layout=LAYOUT, **kw)


def write_smpl_pickle(path: Path, *, chumpy: bool = True, gender: str = "neutral", **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(smpl_bytes(gender, chumpy=chumpy, **kw))
    return path


def write_mano_pickle(path: Path, *, chumpy: bool = True, side: str = "right", **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mano_bytes(side, chumpy=chumpy, **kw))
    return path


def malicious_pickle(command: str = "echo pwned") -> bytes:
    """A protocol-2 pickle that would call posix.system(command) when loaded."""
    cmd = command.encode()
    return b"\x80\x02cposix\nsystem\nU" + bytes([len(cmd)]) + cmd + b"\x85R."


def write_official_zips(directory: Path, *, smpl: Optional[Dict[str, bytes]] = None) -> Dict[str, Path]:
    """Write the three official archives (members, decoys) into ``directory``.

    ``smpl`` may pass pre-built member bytes (keys neutral/female/male/right/left)
    to reuse a session cache.  Returns archive name -> path.
    """
    return S.write_official_zips(directory, models=smpl, note=False, layout=LAYOUT)


class BodyModelFiles:
    """Session cache of generated files (paths under one temp directory)."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self._bytes: Dict[str, bytes] = {}

    def bytes(self, name: str) -> bytes:
        """name: neutral | female | male | right | left | clean-<any of those>."""
        if name not in self._bytes:
            chumpy = not name.startswith("clean-")
            which = name.split("-", 1)[1] if not chumpy else name
            if which in ("right", "left"):
                self._bytes[name] = mano_bytes(which, chumpy=chumpy)
            else:
                self._bytes[name] = smpl_bytes(which, chumpy=chumpy)
        return self._bytes[name]

    def file(self, name: str, filename: Optional[str] = None) -> Path:
        """A fresh copy of the named model under ``filename`` in a new directory."""
        d = self.base / f"f{len(list(self.base.iterdir()))}"
        d.mkdir()
        p = d / (filename or f"{name}.pkl")
        p.write_bytes(self.bytes(name))
        return p

    def zips(self) -> Dict[str, Path]:
        """The three official archives (written once; treat as read-only)."""
        zdir = self.base / "zips"
        if not zdir.is_dir():
            write_official_zips(zdir, smpl={k: self.bytes(k) for k in ("neutral", "female", "male", "right", "left")})
        return {n: zdir / n for n in (SMPLIFY_ZIP, SMPL_ZIP, MANO_ZIP)}


try:
    import pytest

    @pytest.fixture(scope="session")
    def bodymodel_files(tmp_path_factory) -> BodyModelFiles:
        return BodyModelFiles(tmp_path_factory.mktemp("bodymodels"))
except ImportError:  # pragma: no cover
    pass
