"""The one place where settings resolve: flag > environment > default.

Nothing here reads the environment at import time; call :func:`resolve`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

ENV_ROOT = "METRO_ASSETS_ROOT"
ENV_MIRROR = "METRO_ASSETS_MIRROR"          # one or more bases, separated by whitespace or ','
ENV_CONNECTIONS = "METRO_ASSETS_CONNECTIONS"
ENV_JOBS = "METRO_ASSETS_JOBS"
ENV_OFFLINE = "METRO_ASSETS_OFFLINE"

LOCKFILE_NAME = "metro-assets.lock"
STATE_DIR_NAME = ".metro-assets"


@dataclass(frozen=True)
class Settings:
    root: Path
    mirrors: Tuple[str, ...] = ()
    manifests: Tuple[Path, ...] = ()
    offline: bool = False
    connections: Optional[int] = None   # None = automatic
    jobs: int = 4
    # retry / stall policy
    retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    stall_seconds: float = 30.0         # below stall_bytes_per_s for this long = stalled
    stall_bytes_per_s: int = 1024
    extra: Mapping[str, str] = field(default_factory=dict)
    # the lockfile and the state folder under root: Store(root).lockfile / .state_dir


def _split_mirrors(value: str) -> Tuple[str, ...]:
    return tuple(m for m in value.replace(",", " ").split() if m)


def resolve(
    *,
    root: Optional[Path] = None,
    mirrors: Sequence[str] = (),
    manifests: Sequence[Path] = (),
    offline: Optional[bool] = None,
    connections: Optional[int] = None,
    jobs: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
    **overrides,
) -> Settings:
    """Resolve settings from explicit values, then the environment, then defaults."""
    env = os.environ if env is None else env
    if root is None:
        root = Path(env[ENV_ROOT]) if env.get(ENV_ROOT) else Path.cwd()
    mirror_list = tuple(mirrors) or _split_mirrors(env.get(ENV_MIRROR, ""))
    if offline is None:
        offline = env.get(ENV_OFFLINE, "").lower() in ("1", "true", "yes")
    if connections is None and env.get(ENV_CONNECTIONS):
        connections = int(env[ENV_CONNECTIONS])
    if jobs is None:
        jobs = int(env[ENV_JOBS]) if env.get(ENV_JOBS) else 4
    return Settings(
        root=Path(root).expanduser().absolute(),
        mirrors=tuple(m.rstrip("/") for m in mirror_list),
        manifests=tuple(Path(m) for m in manifests),
        offline=bool(offline),
        connections=connections,
        jobs=max(1, jobs),
        **overrides,
    )
