"""Body-model pickles: a restricted loader and a Python-2-compatible writer.

The official SMPL and MANO files are protocol-2 pickles written by Python 2
(strings are BINSTRING, so they need ``encoding='latin1'``).  They name a few
globals: numpy array reconstruction, ``scipy.sparse.csc.csc_matrix``,
``__builtin__.set`` and chumpy's ``Ch`` (plus ``chumpy.reordering.Select`` in
MANO).  :func:`load_body_model` reads them **without chumpy** and without
running anything: :class:`_Unpickler.find_class` resolves only the
allow-listed globals below and refuses every other one with a
:class:`~metro_assets.errors.LoadError` naming it, before any code runs
(GLOBAL is resolved when read, REDUCE comes later).

chumpy objects are loaded as inert stand-ins that only keep their pickled
``__setstate__`` dict, then turned into plain arrays:

* ``Ch``: the state holds the value as ``x`` -> ``x``.
* ``Select``: ``a`` (a ``Ch``), ``idxs`` and ``preferred_shape`` ->
  ``a.ravel()[idxs].reshape(preferred_shape)`` (chumpy's ``compute_r``).

Sparse matrices load as stand-ins too and are rebuilt through scipy's public
constructors, so old (``scipy.sparse.csc``) and new (``scipy.sparse._csc``)
module paths both work and no private scipy state is trusted.

:func:`dump_py2` writes plain values (dict, str, numbers, tuples, lists, sets,
ndarrays, scipy sparse csc/csr) the way the official files are written, so a
"clean" copy loads in Python 2 or 3, with numpy 1.x or 2.x, in upstream METRO
and in smplx.
"""
from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Tuple, Union

import numpy as np

from metro_assets.errors import LoadError

__all__ = ["load_body_model", "loads_restricted", "dump_py2", "dumps_py2", "Py2Object", "ALLOWED_GLOBALS"]


# --------------------------------------------------------------------------- stand-ins

class _Stub:
    """An inert object: NEWOBJ creates it, BUILD stores the state, nothing else."""

    __slots__ = ("state",)
    kind = "?"

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChStub(_Stub):
    __slots__ = ()
    kind = "chumpy.ch.Ch"


class _SelectStub(_Stub):
    __slots__ = ()
    kind = "chumpy.reordering.Select"


class _SparseStub(_Stub):
    __slots__ = ()
    fmt = "?"


def _sparse_stub(fmt: str) -> type:
    return type(f"_Sparse_{fmt}", (_SparseStub,), {"__slots__": (), "fmt": fmt})


_SPARSE_STUBS = {fmt: _sparse_stub(fmt) for fmt in ("csc", "csr", "coo")}


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """Python 3 protocol-2 pickles spell bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise LoadError("Pickle calls _codecs.encode with an unexpected codec", expected="'latin1'", got=repr(encoding))
    return text.encode("latin1")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise LoadError("Pickle reconstructs an array of an unexpected type", expected="numpy.ndarray", got=repr(subtype))
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype: Any, data: Any = None) -> Any:
    try:
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise LoadError("Pickle builds a numpy scalar of an unexpected dtype", expected="a plain numeric dtype", got=repr(dtype))
    return scalar(dtype, data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise LoadError("Pickle builds an array of an unexpected dtype", expected="a plain numeric dtype", got=repr(dtype))
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order=order).copy()


def _globals() -> Dict[Tuple[str, str], Any]:
    table: Dict[Tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = _reconstruct
        table[(mod, "scalar")] = _scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    for fmt in ("csc", "csr", "coo"):
        stub = _SPARSE_STUBS[fmt]
        for mod in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse"):
            table[(mod, f"{fmt}_matrix")] = stub
    for mod in ("__builtin__", "builtins"):
        table[(mod, "set")] = set
        table[(mod, "frozenset")] = frozenset
    table[("_codecs", "encode")] = _latin1_encode
    table[("chumpy.ch", "Ch")] = _ChStub
    table[("chumpy.reordering", "Select")] = _SelectStub
    return table


ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = _globals()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise LoadError(
                f"Refused to load a pickle that references the global {module}.{name}",
                expected="only numpy arrays, scipy sparse matrices, sets and chumpy Ch/Select (body-model contents)",
                got=f"{module}.{name}",
                did="Nothing from the file was executed",
                next_command="use the official SMPL/MANO download; do not load this file",
                global_name=f"{module}.{name}",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise LoadError("Refused a pickle with persistent ids", expected="a plain body-model pickle", got=repr(pid)[:80])


# --------------------------------------------------------------------------- conversion

def _to_plain(obj: Any, where: str = "") -> Any:
    """Replace stand-ins by plain numpy / scipy values, recursively."""
    if isinstance(obj, _ChStub):
        return _ch_value(obj, where)
    if isinstance(obj, _SelectStub):
        return _select_value(obj, where)
    if isinstance(obj, _SparseStub):
        return _sparse_value(obj, where)
    if isinstance(obj, dict):
        return {k: _to_plain(v, f"{where}{'.' if where else ''}{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    return obj


def _state(stub: _Stub, where: str) -> dict:
    if not isinstance(stub.state, dict):
        raise LoadError(f"{stub.kind} object at {where or 'top level'} has no state dict",
                        expected="a pickled __setstate__ dict", got=type(stub.state).__name__)
    return stub.state


def _ch_value(stub: _ChStub, where: str) -> np.ndarray:
    st = _state(stub, where)
    if "x" not in st:
        raise LoadError(f"chumpy Ch at {where} carries no value 'x'", expected="a Ch with 'x'", got=sorted(map(str, st)))
    return np.asarray(_to_plain(st["x"], where))


def _select_value(stub: _SelectStub, where: str) -> np.ndarray:
    st = _state(stub, where)
    missing = [k for k in ("a", "idxs") if k not in st]
    if missing:
        raise LoadError(f"chumpy Select at {where} lacks {', '.join(missing)}", expected="'a' and 'idxs'",
                        got=sorted(map(str, st)))
    a = np.asarray(_to_plain(st["a"], where))
    idxs = np.asarray(_to_plain(st["idxs"], where)).astype(np.intp, copy=False)
    flat = np.ravel(a)
    if idxs.size and (idxs.min() < -flat.size or idxs.max() >= flat.size):
        raise LoadError(f"chumpy Select at {where} indexes outside its array",
                        expected=f"indices below {flat.size}", got=f"{idxs.min()}..{idxs.max()}")
    result = flat[idxs].copy()
    shape = st.get("preferred_shape")
    if shape is not None:
        try:
            result = result.reshape(tuple(int(s) for s in shape))
        except ValueError:
            raise LoadError(f"chumpy Select at {where} cannot take its preferred shape",
                            expected=f"{result.size} values to fill {tuple(shape)}", got=str(result.shape)) from None
    return result


def _sparse_value(stub: _SparseStub, where: str):
    import scipy.sparse as sp

    st = _state(stub, where)
    try:
        shape = tuple(int(s) for s in st.get("_shape", st.get("shape")))
        data = np.asarray(st["data"])
        if stub.fmt == "coo":
            if "coords" in st:
                row, col = (np.asarray(c) for c in st["coords"])
            else:
                row, col = np.asarray(st["row"]), np.asarray(st["col"])
            return sp.coo_matrix((data, (row, col)), shape=shape)
        cls = sp.csc_matrix if stub.fmt == "csc" else sp.csr_matrix
        return cls((data, np.asarray(st["indices"]), np.asarray(st["indptr"])), shape=shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"sparse matrix at {where} is malformed", expected=f"a {stub.fmt} matrix",
                        got=f"{type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- loading

def loads_restricted(data: bytes, *, what: str = "pickle") -> Any:
    """Unpickle ``data`` through the allow-list and return plain values."""
    try:
        raw = _Unpickler(io.BytesIO(data), encoding="latin1").load()
    except LoadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise LoadError(f"{what} is not a readable body-model pickle", expected="a protocol-2 pickle of a dict",
                        got=f"{type(exc).__name__}: {str(exc)[:120]}") from None
    return _to_plain(raw)


def load_body_model(path: Union[str, Path]) -> Dict[str, Any]:
    """Load an SMPL/MANO pickle (chumpy or clean) as a dict of plain values.

    Arrays are ``numpy.ndarray``, regressors ``scipy.sparse`` matrices, chumpy
    objects become arrays.  Raises :class:`LoadError` for anything that is
    not such a pickle, naming any refused global.  No structural check here:
    see :mod:`metro_assets.bodymodels`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"Cannot read {path}", got=exc.strerror or str(exc)) from None
    model = loads_restricted(data, what=str(path))
    if not isinstance(model, dict):
        raise LoadError(f"{path} does not hold a body model", expected="a pickled dict of arrays",
                        got=type(model).__name__)
    return model


# --------------------------------------------------------------------------- writing

class Py2Object:
    """An object to write as ``GLOBAL module name; EMPTY_TUPLE; NEWOBJ; state; BUILD``.

    Used to reproduce chumpy-bearing files (test fixtures); the loader maps
    them back only if ``module.name`` is on its allow-list.
    """

    __slots__ = ("module", "name", "state")

    def __init__(self, module: str, name: str, state: Dict[str, Any]) -> None:
        self.module, self.name, self.state = module, name, state


class _Py2Writer:
    """Emits protocol-2 opcodes the way Python 2's cPickle wrote body models."""

    def __init__(self, f: BinaryIO, *, legacy_sparse: bool = False, object_arrays: bool = False) -> None:
        self.f = f
        self.memo: Dict[Any, int] = {}
        self.legacy_sparse = legacy_sparse
        self.object_arrays = object_arrays

    # -- low level
    def w(self, b: bytes) -> None:
        self.f.write(b)

    def put(self, key: Any) -> None:
        idx = len(self.memo)
        self.memo[key] = idx
        self.w(b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx))

    def get(self, key: Any) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.w(b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx))
        return True

    def glob(self, module: str, name: str) -> None:
        key = ("global", module, name)
        if not self.get(key):
            self.w(b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
            self.put(key)

    # -- values
    def dump(self, obj: Any) -> None:
        self.w(b"\x80\x02")
        self.save(obj)
        self.w(b".")

    def save(self, obj: Any) -> None:
        if obj is None:
            self.w(b"N")
        elif obj is True or obj is False or isinstance(obj, np.bool_):
            self.w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, (int, np.integer)):
            self.save_int(int(obj))
        elif isinstance(obj, (float, np.floating)):
            self.w(b"G" + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            self.save_str(obj.encode("latin1"), memo_key=("str", obj))
        elif isinstance(obj, (bytes, bytearray)):
            self.save_str(bytes(obj))
        elif isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, list):
            self.w(b"]")
            self.put(("id", id(obj)))
            self.save_items(obj)
        elif isinstance(obj, (set, frozenset)):
            self.glob("__builtin__", "set")
            self.w(b"]")
            self.save_items(sorted(obj, key=repr))
            self.w(b"\x85R")
        elif isinstance(obj, dict):
            self.w(b"}")
            self.put(("id", id(obj)))
            self.save_dict(obj)
        elif isinstance(obj, np.ndarray):
            self.save_array(obj)
        elif isinstance(obj, Py2Object):
            self.glob(obj.module, obj.name)
            self.w(b")\x81")
            self.w(b"}")
            self.save_dict(obj.state)
            self.w(b"b")
        elif _is_sparse(obj):
            self.save_sparse(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a body-model pickle")

    def save_int(self, v: int) -> None:
        if 0 <= v < 256:
            self.w(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.w(b"M" + struct.pack("<H", v))
        elif -(2 ** 31) <= v < 2 ** 31:
            self.w(b"J" + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.w(b"\x8a" + bytes([len(raw)]) + raw)

    def save_str(self, raw: bytes, memo_key: Any = None) -> None:
        if memo_key is not None and self.get(memo_key):
            return
        if len(raw) < 256:
            self.w(b"U" + bytes([len(raw)]) + raw)
        else:
            self.w(b"T" + struct.pack("<i", len(raw)) + raw)
        if memo_key is not None:
            self.put(memo_key)

    def save_tuple(self, t: tuple) -> None:
        if not t:
            self.w(b")")
            return
        if len(t) <= 3:
            for v in t:
                self.save(v)
            self.w(b"\x85\x86\x87"[len(t) - 1:len(t)])
            return
        self.w(b"(")
        for v in t:
            self.save(v)
        self.w(b"t")

    def save_items(self, items: Iterable[Any]) -> None:
        items = list(items)
        for start in range(0, len(items), 1000):
            self.w(b"(")
            for v in items[start:start + 1000]:
                self.save(v)
            self.w(b"e")

    def save_dict(self, d: Dict[Any, Any]) -> None:
        items = list(d.items())
        for start in range(0, len(items), 1000):
            self.w(b"(")
            for k, v in items[start:start + 1000]:
                self.save(k)
                self.save(v)
            self.w(b"u")

    def save_dtype(self, dt: np.dtype) -> None:
        key = ("dtype", dt.str)
        if self.get(key):
            return
        if dt.fields is not None or (dt.hasobject and not (self.object_arrays and dt == np.dtype(object))):
            raise TypeError(f"cannot write arrays of dtype {dt} into a body-model pickle")
        _, args, state = dt.__reduce__()
        self.glob("numpy", "dtype")
        # Python 2 numpy pickled the flags as ints (0, 1), not bools.
        self.save_tuple((args[0], int(args[1]), int(args[2])))
        self.w(b"R")
        self.save_tuple(tuple(state))
        self.w(b"b")
        self.put(key)

    def save_array(self, a: np.ndarray) -> None:
        objects = a.dtype == np.dtype(object) and self.object_arrays
        fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous) and not objects
        data = b"" if objects else (np.asfortranarray(a) if fortran else np.ascontiguousarray(a)).tobytes(order="F" if fortran else "C")
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.save_tuple((0,))
        self.save_str(b"b", memo_key=("str", "b"))
        self.w(b"\x87R")
        self.w(b"(")
        self.save_int(1)
        self.save_tuple(tuple(int(s) for s in a.shape))
        self.save_dtype(a.dtype)
        self.w(b"\x88" if fortran else b"\x89")
        if objects:                 # numpy pickles an object array's items as a list
            self.save(list(a.ravel()))
        else:
            self.save_str(data)
        self.w(b"tb")

    def save_sparse(self, m: Any) -> None:
        fmt = m.format
        if fmt not in ("csc", "csr"):
            m, fmt = m.tocsc(), "csc"
        # scipy.sparse.csc (the official files' path) is deprecated and goes away in
        # SciPy 2.0; scipy.sparse.csc_matrix resolves in every scipy, old and new.
        self.glob(f"scipy.sparse.{fmt}" if self.legacy_sparse else "scipy.sparse", f"{fmt}_matrix")
        self.w(b")\x81}")
        self.save_dict({"format": fmt, "_shape": tuple(int(s) for s in m.shape), "indptr": np.asarray(m.indptr),
                        "indices": np.asarray(m.indices), "maxprint": 50, "data": np.asarray(m.data)})
        self.w(b"b")


def _is_sparse(obj: Any) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(obj)


def dump_py2(obj: Any, f: BinaryIO, *, legacy_sparse: bool = False, object_arrays: bool = False) -> None:
    """Write ``obj`` as a Python-2-style protocol-2 pickle (see module docstring).

    ``legacy_sparse=True`` names sparse matrices ``scipy.sparse.csc.csc_matrix``
    exactly like the official files (for fixtures); the default
    ``scipy.sparse.csc_matrix`` loads everywhere without deprecation warnings.
    ``object_arrays=True`` also writes numpy object arrays (dtype ``|O``, items pickled as a
    list), the way numpy under Python 2 pickled upstream's npz members; by default they are
    refused, as no body model holds one.
    """
    _Py2Writer(f, legacy_sparse=legacy_sparse, object_arrays=object_arrays).dump(obj)


def dumps_py2(obj: Any, *, legacy_sparse: bool = False, object_arrays: bool = False) -> bytes:
    buf = io.BytesIO()
    dump_py2(obj, buf, legacy_sparse=legacy_sparse, object_arrays=object_arrays)
    return buf.getvalue()
