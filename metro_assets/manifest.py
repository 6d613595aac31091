"""Manifests: strict, declarative descriptions of every asset.

A manifest is YAML with a top-level ``groups`` mapping and an ``assets``
list (see manifests/README.md).  Loading keeps each node's line so that every
validation error names the file, the line, the key path and what was
expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from metro_assets.errors import ManifestError, SelectionError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

# Structural check names (see checks.py).  ``dataset`` assets are tar archives
# that unpack into a directory (see datasets work).
KINDS = ("torch-checkpoint", "torch-weights", "npy", "npz", "zip", "yaml", "body-model", "tar", "dataset", "binary")
SOURCE_KINDS = ("https", "http", "file", "onedrive", "hf", "manual")
LICENSES_MANUAL = ("SMPL", "MANO")


@dataclass(frozen=True)
class Source:
    kind: str                      # https | http | file | onedrive | hf | s3 | manual
    url: Optional[str] = None      # None for manual
    dead_since: Optional[str] = None
    reason: Optional[str] = None
    # manual-only fields
    site: Optional[str] = None
    archive: Optional[str] = None
    member: Optional[str] = None
    note: Optional[str] = None

    @property
    def manual(self) -> bool:
        return self.kind == "manual"

    @property
    def dead(self) -> bool:
        return self.dead_since is not None

    def describe(self) -> str:
        if self.manual:
            return f"manual: {self.site or '?'} ({self.archive or '?'})"
        return self.url or "?"


@dataclass(frozen=True)
class Asset:
    id: str
    group: str
    path: str                      # relative POSIX path inside the root
    kind: str
    sources: Tuple[Source, ...]
    tags: Tuple[str, ...] = ()
    size: Optional[int] = None
    sha256: Optional[str] = None
    license: Optional[str] = None
    license_url: Optional[str] = None
    description: str = ""
    optional: bool = False         # not required for a complete tree (e.g. SMPL male/female)
    check: Optional[str] = None    # deep-check hook name (needs torch etc.)
    archive: Optional[str] = None  # datasets: archive file name
    origin: str = ""               # manifest file that defined it

    @property
    def manual(self) -> bool:
        """License-gated: every source is manual."""
        return bool(self.sources) and all(s.manual for s in self.sources)

    @property
    def mirror_path(self) -> str:
        """Where the file sits below a mirror base."""
        if self.kind == "dataset" and self.archive:
            return str(PurePosixPath(self.path).parent / self.archive)
        return self.path

    def dest(self, root: Path) -> Path:
        return root.joinpath(*PurePosixPath(self.path).parts)


@dataclass(frozen=True)
class Group:
    name: str
    description: str = ""
    opt_in: bool = False


@dataclass(frozen=True)
class Catalog:
    """All loaded manifests, merged in order (later files override earlier ids)."""

    assets: Tuple[Asset, ...]
    groups: Mapping[str, Group]
    files: Tuple[str, ...] = ()

    def by_id(self) -> Dict[str, Asset]:
        return {a.id: a for a in self.assets}

    def get(self, asset_id: str) -> Asset:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise SelectionError(f"No asset named {asset_id!r}", expected="an asset id from `metro-assets list`",
                             next_command="metro-assets list")

    def select(self, names: Sequence[str]) -> List[Asset]:
        """Resolve a selection: ``all``, group names, tags and asset ids.

        ``all`` means every group that is not opt-in.  Order follows the catalog.
        """
        if not names:
            names = ["all"]
        chosen: Dict[str, Asset] = {}
        unknown = []
        for name in names:
            matched = [a for a in self.assets if self._matches(a, name)]
            if not matched:
                unknown.append(name)
            for a in matched:
                chosen[a.id] = a
        if unknown:
            valid = sorted({"all", *self.groups, *(t for a in self.assets for t in a.tags)})
            raise SelectionError(
                f"Nothing matches {', '.join(repr(u) for u in unknown)}",
                expected=f"'all', a group ({', '.join(sorted(self.groups))}), a tag or an asset id",
                did="Nothing was fetched or changed",
                next_command="metro-assets list   # shows every id, group and tag",
                valid=valid,
            )
        return [a for a in self.assets if a.id in chosen]

    def _matches(self, a: Asset, name: str) -> bool:
        g = self.groups.get(a.group)
        opt_in = bool(g and g.opt_in)
        if name == "all":
            return not opt_in
        if name == a.id or name == a.group:
            return True
        # tags select within the default groups: `hand` must not pull in a 4 GB dataset
        return name in a.tags and not opt_in


# --------------------------------------------------------------------------- YAML with lines

class _Node:
    """A parsed YAML value with the line where it starts."""

    __slots__ = ("value", "line")

    def __init__(self, value: Any, line: int) -> None:
        self.value = value
        self.line = line


def _compose(text: str, file: str) -> Optional[_Node]:
    import yaml

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"YAML syntax error: {problem}", file=file, line=line, key_path="",
                            expected="valid YAML") from None
    if node is None:
        return None
    return _convert(node, file, "")


def _convert(node, file: str, path: str) -> _Node:
    import yaml

    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: Dict[str, _Node] = {}
        for k, v in node.value:
            key = _scalar(k)
            if not isinstance(key, str):
                raise ManifestError(f"mapping key {key!r} is not a string", file=file, line=k.start_mark.line + 1,
                                    key_path=path, expected="string keys")
            if key in out:
                raise ManifestError(f"duplicate key {key!r}", file=file, line=k.start_mark.line + 1,
                                    key_path=_join(path, key), expected="each key once")
            out[key] = _convert(v, file, _join(path, key))
        return _Node(out, line)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_convert(v, file, f"{path}[{i}]") for i, v in enumerate(node.value)], line)
    return _Node(_scalar(node), line)


_SCALAR_LOADER = None


def _scalar(node) -> Any:
    global _SCALAR_LOADER
    import yaml

    if _SCALAR_LOADER is None:
        _SCALAR_LOADER = yaml.SafeLoader("")
    return _SCALAR_LOADER.construct_object(node, deep=True)


def _join(path: str, key: str) -> str:
    return f"{path} -> {key}" if path else key


# --------------------------------------------------------------------------- validation

class _Ctx:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Optional[_Node], key_path: str, what: str, expected: str, got: Any = None):
        raise ManifestError(what, file=self.file, line=node.line if node else None, key_path=key_path,
                            expected=expected, got=None if got is None else repr(got))


def _plain(node: Optional[_Node]) -> Any:
    if node is None:
        return None
    v = node.value
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _get(ctx: _Ctx, m: _Node, key: str, path: str, *, required: bool, types, expected: str, nullable: bool = False):
    """Read ``key`` of mapping node ``m``.  ``required``: the key must be present;
    ``nullable``: an explicit null is allowed (absent optional keys are None)."""
    node = m.value.get(key)
    kp = _join(path, key)
    if node is None:
        if required:
            ctx.fail(m, kp, f"missing required key {key!r}", expected)
        return None, None
    val = node.value
    if val is None:
        if nullable or not required:
            return None, node
        ctx.fail(node, kp, f"{key!r} must not be null", expected)
    tys = types if isinstance(types, tuple) else (types,)
    if types is not None and (not isinstance(val, tys) or (isinstance(val, bool) and bool not in tys)):
        ctx.fail(node, kp, f"wrong type for {key!r}", expected, val)
    return val, node


def validate_path(ctx: _Ctx, node: Optional[_Node], kp: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        ctx.fail(node, kp, "path must be a non-empty string", "a relative path like models/x.bin", value)
    if "\\" in value:
        ctx.fail(node, kp, "path uses backslashes", "a POSIX relative path with '/' separators", value)
    p = PurePosixPath(value)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", value):
        ctx.fail(node, kp, "absolute path", "a path relative to the root", value)
    if any(part == ".." for part in p.parts):
        ctx.fail(node, kp, "path leaves the root through '..'", "a path inside the root, without '..'", value)
    if any(part in (".", "") for part in value.split("/")):
        ctx.fail(node, kp, "path has empty or '.' components", "a normalised relative path", value)
    if p.parts and p.parts[0] == ".metro-assets":
        ctx.fail(node, kp, "path is inside metro-assets' own state folder", "a path outside .metro-assets/", value)
    return str(p)


def _source(ctx: _Ctx, node: _Node, kp: str) -> Source:
    v = node.value
    if isinstance(v, str):
        return Source(kind=_kind_of_url(ctx, node, kp, v), url=v)
    if not isinstance(v, dict):
        ctx.fail(node, kp, "a source must be a URL string or a mapping", "'https://...' or {kind: ..., url: ...}", _plain(node))
    allowed = {"kind", "url", "dead_since", "reason", "site", "archive", "member", "note"}
    for k, sub in v.items():
        if k not in allowed:
            ctx.fail(sub, _join(kp, k), f"unknown source key {k!r}", f"one of {', '.join(sorted(allowed))}")
    kind, knode = _get(ctx, node, "kind", kp, required=False, types=str, expected="a source kind")
    url, unode = _get(ctx, node, "url", kp, required=False, types=str, expected="a URL string")
    if kind is None:
        if url is None:
            ctx.fail(node, _join(kp, "kind"), "source has neither 'kind' nor 'url'", "kind: manual, or a url")
        kind = _kind_of_url(ctx, unode, _join(kp, "url"), url)
    if kind not in SOURCE_KINDS:
        ctx.fail(knode, _join(kp, "kind"), f"unknown source kind {kind!r}", f"one of {', '.join(SOURCE_KINDS)}", kind)
    fields = {k: (_plain(v.get(k)) if v.get(k) is not None else None) for k in ("dead_since", "reason", "site", "archive", "member", "note")}
    for k, val in fields.items():
        if val is not None and not isinstance(val, str):
            fields[k] = str(val)
    if kind == "manual":
        for k in ("site", "archive", "member"):
            if not fields[k]:
                ctx.fail(node, _join(kp, k), f"manual source needs {k!r}", "site (official URL), archive (file name) and member (path inside it)")
    elif url is None:
        ctx.fail(node, _join(kp, "url"), f"{kind} source needs a url", "a URL string")
    return Source(kind=kind, url=url, **fields)


def _kind_of_url(ctx: _Ctx, node: Optional[_Node], kp: str, url: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        if "1drv.ms" in url or "onedrive.live.com" in url or "sharepoint.com" in url:
            return "onedrive"
        return scheme
    if scheme in ("file", "hf"):
        return scheme
    ctx.fail(node, kp, f"unsupported URL {url!r}", "an http(s)://, file:// or hf:// URL", url)
    return ""


_ASSET_KEYS = {"id", "group", "tags", "path", "size", "sha256", "sources", "license", "license_url", "kind",
               "description", "optional", "check", "archive"}


def _asset(ctx: _Ctx, node: _Node, kp: str, groups: Mapping[str, Group]) -> Asset:
    if not isinstance(node.value, dict):
        ctx.fail(node, kp, "an asset must be a mapping", "a mapping with id, group, path, kind, sources", _plain(node))
    aid, idn = _get(ctx, node, "id", kp, required=True, types=str, expected="an asset id (lower-case, digits, '.', '_', '-')")
    if not ID_RE.match(aid):
        ctx.fail(idn, _join(kp, "id"), f"invalid asset id {aid!r}", "lower-case letters, digits, '.', '_', '-'", aid)
    kp = f"assets -> {aid}"
    for k, sub in node.value.items():
        if k not in _ASSET_KEYS:
            ctx.fail(sub, _join(kp, k), f"unknown asset key {k!r}", f"one of {', '.join(sorted(_ASSET_KEYS))}")
    group, gn = _get(ctx, node, "group", kp, required=True, types=str, expected="a group name")
    if groups and group not in groups:
        ctx.fail(gn, _join(kp, "group"), f"unknown group {group!r}", f"one of {', '.join(sorted(groups))} (declare it under 'groups')", group)
    path, pn = _get(ctx, node, "path", kp, required=True, types=str, expected="a relative path")
    path = validate_path(ctx, pn, _join(kp, "path"), path)
    kind, kn = _get(ctx, node, "kind", kp, required=True, types=str, expected=f"one of {', '.join(KINDS)}")
    if kind not in KINDS:
        ctx.fail(kn, _join(kp, "kind"), f"unknown kind {kind!r}", f"one of {', '.join(KINDS)}", kind)
    size, sn = _get(ctx, node, "size", kp, required=True, nullable=True, types=int, expected="a byte count (integer) or null")
    if size is not None and size < 0:
        ctx.fail(sn, _join(kp, "size"), "negative size", "a byte count >= 0 or null", size)
    sha, hn = _get(ctx, node, "sha256", kp, required=True, nullable=True, types=str, expected="64 lower-case hex digits or null")
    if sha is not None:
        sha = sha.strip()
        if sha.startswith("sha256:"):
            sha = sha[7:]
        if not SHA256_RE.match(sha):
            ctx.fail(hn, _join(kp, "sha256"), "bad sha256", "64 lower-case hex digits or null", sha)
    srcs, srcn = _get(ctx, node, "sources", kp, required=True, types=list, expected="a list of sources")
    if not srcs:
        ctx.fail(srcn, _join(kp, "sources"), "no sources", "at least one source (a URL or {kind: manual, ...})")
    sources = tuple(_source(ctx, s, f"{kp} -> sources[{i}]") for i, s in enumerate(srcs))
    tags, tn = _get(ctx, node, "tags", kp, required=False, types=list, expected="a list of strings")
    tags = tuple(_plain(tn)) if tags else ()
    if any(not isinstance(t, str) for t in tags):
        ctx.fail(tn, _join(kp, "tags"), "tags must be strings", "a list of strings", list(tags))
    lic, _ = _get(ctx, node, "license", kp, required=False, types=str, expected="a license name")
    lic_url, _ = _get(ctx, node, "license_url", kp, required=False, types=str, expected="a URL")
    desc, _ = _get(ctx, node, "description", kp, required=False, types=str, expected="text")
    optional, _ = _get(ctx, node, "optional", kp, required=False, types=bool, expected="true or false")
    check, _ = _get(ctx, node, "check", kp, required=False, types=str, expected="a deep-check name")
    archive, an = _get(ctx, node, "archive", kp, required=False, types=str, expected="an archive file name")
    if kind == "dataset" and not archive:
        ctx.fail(node, _join(kp, "archive"), "dataset asset needs 'archive'", "the tar file name, e.g. freihand.tar")
    if any(s.manual for s in sources) and not all(s.manual for s in sources):
        pass  # a manual source beside automatic ones is allowed: it documents the official origin
    return Asset(id=aid, group=group, path=path, kind=kind, sources=sources, tags=tags, size=size, sha256=sha,
                 license=lic, license_url=lic_url, description=desc or "", optional=bool(optional), check=check,
                 archive=archive, origin=ctx.file)


def parse_manifest(text: str, file: str, known_groups: Optional[Mapping[str, Group]] = None) -> Tuple[Dict[str, Group], List[Asset]]:
    """Parse and validate one manifest's text.  Raises ManifestError."""
    ctx = _Ctx(file)
    root = _compose(text, file)
    if root is None or not isinstance(root.value, dict):
        ctx.fail(root, "", "manifest is empty or not a mapping", "a mapping with 'assets' (and optionally 'groups', 'version')")
    for k, sub in root.value.items():
        if k not in ("version", "groups", "assets", "description"):
            ctx.fail(sub, k, f"unknown top-level key {k!r}", "version, description, groups, assets")
    ver, vn = _get(ctx, root, "version", "", required=False, types=int, expected="1")
    if ver not in (None, 1):
        ctx.fail(vn, "version", f"unsupported manifest version {ver}", "1", ver)
    groups: Dict[str, Group] = dict(known_groups or {})
    gmap, gnode = _get(ctx, root, "groups", "", required=False, types=dict, expected="a mapping of group name to {description, opt_in}")
    for name, gn in (gmap or {}).items():
        kp = f"groups -> {name}"
        if gn.value is None:
            groups[name] = Group(name)
            continue
        if not isinstance(gn.value, dict):
            ctx.fail(gn, kp, "a group must be a mapping", "{description: ..., opt_in: true|false}", _plain(gn))
        desc, _ = _get(ctx, gn, "description", kp, required=False, types=str, expected="text")
        opt, _ = _get(ctx, gn, "opt_in", kp, required=False, types=bool, expected="true or false")
        groups[name] = Group(name, desc or "", bool(opt))
    alist, anode = _get(ctx, root, "assets", "", required=True, types=list, expected="a list of assets")
    assets: List[Asset] = []
    seen_ids: Dict[str, int] = {}
    seen_paths: Dict[str, Tuple[str, int]] = {}
    for i, an in enumerate(alist):
        a = _asset(ctx, an, f"assets[{i}]", groups)
        if a.id in seen_ids:
            ctx.fail(an, f"assets -> {a.id} -> id", f"duplicate asset id {a.id!r} (first at line {seen_ids[a.id]})", "unique ids")
        key = a.path.lower()
        if key in seen_paths:
            other, line = seen_paths[key]
            ctx.fail(an.value.get("path"), f"assets -> {a.id} -> path",
                     f"duplicate path {a.path!r}: asset {other!r} (line {line}) already uses it", "each path used by one asset")
        seen_ids[a.id] = an.line
        seen_paths[key] = (a.id, an.line)
        assets.append(a)
    return groups, assets


def builtin_manifest_dir() -> Path:
    """The manifests shipped with the package: ``metro_assets/manifests`` in an installed
    wheel, the top-level ``manifests/`` in a source checkout (or an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "manifests", here.parent / "manifests"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise ManifestError("the built-in manifests are missing from this installation", file=str(here / "manifests"),
                        line=None, key_path="", expected="metro_assets/manifests/*.yaml",
                        next_command="reinstall metro-assets (pip install --force-reinstall metro-assets)")


def load_catalog(extra: Sequence[Path] = (), *, builtin: bool = True) -> Catalog:
    """Load the built-in manifests, then each ``--manifest`` file in order.

    A later file's asset with an existing id replaces the earlier one; paths
    must stay unique across the merged catalog.
    """
    files: List[Path] = []
    if builtin:
        files.extend(sorted(builtin_manifest_dir().glob("*.yaml")))
    files.extend(Path(p) for p in extra)
    groups: Dict[str, Group] = {}
    merged: Dict[str, Asset] = {}
    # first pass collects groups, so an override file may use built-in groups
    parsed = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError("manifest file not found", file=str(f), line=None, key_path="",
                                expected="an existing YAML file", next_command="check the --manifest path") from None
        except UnicodeDecodeError:
            raise ManifestError("manifest is not UTF-8 text", file=str(f), line=None, key_path="", expected="UTF-8 YAML") from None
        g, a = parse_manifest(text, str(f), groups)
        groups.update(g)
        parsed.append((f, a))
        for asset in a:
            merged[asset.id] = asset
    for a in merged.values():
        if a.group not in groups:
            raise ManifestError(f"unknown group {a.group!r}", file=a.origin, line=None, key_path=f"assets -> {a.id} -> group",
                                expected=f"one of {', '.join(sorted(groups))} (declare it under 'groups')", got=repr(a.group))
    # global path uniqueness
    seen: Dict[str, Asset] = {}
    for a in merged.values():
        k = a.path.lower()
        if k in seen:
            o = seen[k]
            raise ManifestError(f"duplicate path {a.path!r}: assets {o.id!r} ({o.origin}) and {a.id!r} ({a.origin})",
                                file=a.origin, line=None, key_path=f"assets -> {a.id} -> path", expected="each path used by one asset")
        seen[k] = a
    return Catalog(assets=tuple(merged.values()), groups=groups, files=tuple(str(f) for f in files))
