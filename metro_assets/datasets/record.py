"""The per-dataset record: every extracted file's size and sha256, kept in the root.

``<root>/.metro-assets/datasets/<id>.json`` lets ``verify`` check a dataset
after its tar is gone (fast path: the store's stamps).  It also keeps what the
extraction learnt for free while the bytes streamed by: each TSV's row count
and the digest of its true row starts, so ``verify --deep`` can prove a
``.lineidx`` exact without re-reading a multi-GB TSV.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from metro_assets.store import atomic_write_json, now_iso, read_json

VERSION = 1


@dataclass
class DatasetRecord:
    id: str
    path: str                                     # datasets/<name>, relative to the root
    archive: Dict[str, Any] = field(default_factory=dict)   # name, size, sha256, source, how
    layout: str = ""
    files: Dict[str, list] = field(default_factory=dict)    # rel (below path) -> [size, sha256]
    tsv: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # rel -> {rows, starts_sha256, ends_with_newline}
    notes: list = field(default_factory=list)     # e.g. "regenerated train.img.lineidx"
    created_at: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"version": VERSION, "id": self.id, "path": self.path, "archive": self.archive, "layout": self.layout,
                "files": self.files, "tsv": self.tsv, "notes": self.notes, "created_at": self.created_at or now_iso()}

    @property
    def total_bytes(self) -> int:
        return sum(int(v[0]) for v in self.files.values())


def record_path(state_dir: Path, asset_id: str) -> Path:
    return state_dir / "datasets" / f"{asset_id}.json"


def load(state_dir: Path, asset_id: str) -> Optional[DatasetRecord]:
    data = read_json(record_path(state_dir, asset_id), None)
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("files"), dict):
        return None
    return DatasetRecord(id=data.get("id", asset_id), path=data.get("path", ""), archive=data.get("archive") or {},
                         layout=data.get("layout", ""), files=data["files"], tsv=data.get("tsv") or {},
                         notes=list(data.get("notes") or []), created_at=data.get("created_at", ""))


def save(state_dir: Path, rec: DatasetRecord) -> Path:
    p = record_path(state_dir, rec.id)
    atomic_write_json(p, rec.to_json())
    return p
