"""Tiny synthetic METRO datasets in the exact released layout, and evil tars.

Layout and row formats follow DATASETS.md §2-§5: img/hw/label/linelist TSVs
with ``.lineidx`` row offsets, plain yamls, and the composite
``Tax-H36m-coco40k-Muco-UP-Mpii`` whose yaml points at the other datasets
through ``../<dataset>/...``.  Images are minimal JPEG byte streams (SOI,
JFIF APP0, SOF0 with the row's height/width, EOI): enough for the marker and
size checks, no image library needed.
"""
from __future__ import annotations

import base64
import io
import json
import os
import random
import struct
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

COMPOSITE = "Tax-H36m-coco40k-Muco-UP-Mpii"
COMPOSITE_SOURCES = [  # (dataset, img, hw, label) in the composite yaml's order
    ("human3.6m", "train.img.tsv", "train.hw.tsv", "smpl/train.label.smpl.p1.tsv"),
    ("coco_smpl", "train.img.tsv", "train.hw.tsv", "smpl/train.label.tsv"),
    ("muco", "train.img.tsv", "train.hw.tsv", "train.label.tsv"),
    ("up3d", "trainval.img.tsv", "trainval.hw.tsv", "trainval.label.tsv"),
    ("mpii", "train.img.tsv", "train.hw.tsv", "train.label.tsv"),
]
NAMES = [COMPOSITE, "human3.6m", "coco_smpl", "muco", "up3d", "mpii", "3dpw", "freihand"]
IDS = {COMPOSITE: "tax-h36m-coco40k-muco-up-mpii"}


def asset_id(name: str) -> str:
    return IDS.get(name, name)


# --------------------------------------------------------------------------- rows

def jpeg(height: int, width: int, payload: bytes = b"") -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + payload + b"\xff\xd9"


def body_label(rng: random.Random, *, nested: bool = True, gender: Optional[str] = None) -> dict:
    j2 = [[round(rng.uniform(0, 200), 3), round(rng.uniform(0, 200), 3), 1.0] for _ in range(24)]
    j3 = [[round(rng.uniform(-1, 1), 4), round(rng.uniform(-1, 1), 4), round(rng.uniform(-1, 1), 4), 1.0] for _ in range(24)]
    d = {"center": [100.0, 90.0], "scale": 1.2, "2d_joints": [j2] if nested else j2, "has_2d_joints": 1,
         "3d_joints": [j3], "has_3d_joints": 1, "pose": [round(rng.uniform(-1, 1), 4) for _ in range(72)],
         "betas": [round(rng.uniform(-1, 1), 4) for _ in range(10)], "has_smpl": 1}
    if gender:
        d["gender"] = gender
    return d


def hand_label(rng: random.Random, *, test: bool = False) -> dict:
    if test:  # FreiHAND test: dummy values by design (DATASETS.md §4.3.1)
        return {"center": [112, 112], "scale": 0.9, "2d_joints": [[0, 0, 0]] * 21, "has_2d_joints": 0,
                "3d_joints": [[0, 0, 0, 0]] * 21, "has_3d_joints": 0, "pose": [1.0] * 48, "betas": [1.0] * 10,
                "has_smpl": 1}
    return {"center": [112, 112], "scale": 0.9,
            "2d_joints": [[round(rng.uniform(0, 224), 2), round(rng.uniform(0, 224), 2), 1] for _ in range(21)],
            "has_2d_joints": 1, "3d_joints": [[round(rng.uniform(-.1, .1), 4) for _ in range(3)] + [1] for _ in range(21)],
            "has_3d_joints": 1, "pose": [round(rng.uniform(-1, 1), 4) for _ in range(48)],
            "betas": [round(rng.uniform(-1, 1), 4) for _ in range(10)], "has_smpl": 1,
            "hrnet_2d_joints": [0.5] * 63, "has_hrnet_2d_joints": 1}


def write_tsv(path: Path, rows: Iterable[Sequence[str]], *, lineidx: bool = True, lineidx_final_newline: bool = True) -> List[int]:
    """tsv_writer: TAB-joined rows ending in '\\n', plus the ``.lineidx`` of row offsets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets, pos, out = [], 0, []
    for r in rows:
        line = ("\t".join(r) + "\n").encode("ascii")
        offsets.append(pos)
        pos += len(line)
        out.append(line)
    path.write_bytes(b"".join(out))
    if lineidx:
        text = "\n".join(str(o) for o in offsets) + ("\n" if lineidx_final_newline and offsets else "")
        lineidx_of(path).write_text(text)
    return offsets


def lineidx_of(tsv: Path) -> Path:
    return tsv.with_name(tsv.name.rsplit(".", 1)[0] + ".lineidx")


def write_split(folder: Path, *, img: str, hw: str, label: str, linelist: Optional[str], rows: int, domain: str,
                seed: int, keys: Optional[List[str]] = None, empty_rows: Sequence[int] = (), test: bool = False,
                gender: bool = False, flat_2d: bool = False, image_bytes: int = 64) -> None:
    rng = random.Random(seed)
    keys = keys or [f"images/{seed}_{i:06d}.jpg" for i in range(rows)]
    imgs, hws, labels = [], [], []
    for i, key in enumerate(keys):
        h, w = 100 + i, 80 + 2 * i
        imgs.append((key, base64.b64encode(jpeg(h, w, rng.randbytes(image_bytes))).decode()))
        hws.append((key, json.dumps([{"height": h, "width": w}])))
        if i in empty_rows:
            ann: list = []
        elif domain == "hand":
            ann = [hand_label(rng, test=test)]
        else:
            ann = [body_label(rng, nested=not flat_2d, gender=rng.choice(["m", "f"]) if gender else None)]
        labels.append((key, json.dumps(ann)))
    write_tsv(folder / img, imgs)
    write_tsv(folder / hw, hws)
    write_tsv(folder / label, labels)
    if linelist:
        write_tsv(folder / linelist, [(str(i),) for i in range(len(keys)) if i not in empty_rows])


def write_yaml(path: Path, mapping: Dict[str, object]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping, sort_keys=True))


def build_dataset(out: Path, name: str, *, rows: int = 4, image_bytes: int = 64) -> Path:
    """Write dataset ``name`` at ``out/name`` (DATASETS.md §2) and return that folder."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(rows=rows, image_bytes=image_bytes)
    if name == "human3.6m":
        write_split(d, img="train.img.tsv", hw="train.hw.tsv", label="smpl/train.label.smpl.p1.tsv",
                    linelist="smpl/train.linelist.smpl.p1.tsv", domain="body", seed=1, **kw)
        write_tsv(d / "train.linelist.tsv", [(str(i),) for i in range(rows)])
        write_split(d / "valid_protocol2", img="valid.img.tsv", hw="valid.hw.tsv", label="valid.label.tsv",
                    linelist="valid.linelist.tsv", domain="body", seed=2, **kw)
        write_yaml(d / "valid.protocol2.yaml", {k: f"valid_protocol2/valid.{k}.tsv" for k in ("img", "hw", "label", "linelist")})
    elif name == "coco_smpl":
        write_split(d, img="train.img.tsv", hw="train.hw.tsv", label="smpl/train.label.tsv",
                    linelist="smpl/train.linelist.tsv", domain="body", seed=3, **kw)
    elif name in ("muco", "mpii"):
        write_split(d, img="train.img.tsv", hw="train.hw.tsv", label="train.label.tsv", linelist="train.linelist.tsv",
                    domain="body", seed=4 if name == "muco" else 5, empty_rows=(2,) if name == "muco" else (), **kw)
    elif name == "up3d":
        write_split(d, img="trainval.img.tsv", hw="trainval.hw.tsv", label="trainval.label.tsv",
                    linelist="trainval.linelist.tsv", domain="body", seed=6,
                    keys=[f"{i:05d}_image.png" for i in range(rows)], **kw)
    elif name == "3dpw":
        write_split(d, img="train.img.tsv", hw="train.hw.tsv", label="train.label.tsv", linelist="train.linelist.tsv",
                    domain="body", seed=7, flat_2d=True, gender=True, **kw)
        keys = [f"courtyard_arguing_00/image_{i // 2:05d}.jpg" for i in range(rows)]  # two people per frame
        write_split(d / "has_gender", img="test.img.tsv", hw="test.hw.tsv", label="test.label.tsv",
                    linelist="test.linelist.tsv", domain="body", seed=8, keys=keys, flat_2d=True, gender=True, **kw)
        write_yaml(d / "test_has_gender.yaml", {k: f"has_gender/test.{k}.tsv" for k in ("img", "hw", "label", "linelist")})
    elif name == "freihand":
        for split, seed in (("train", 9), ("test", 10)):
            write_split(d, img=f"{split}.img.tsv", hw=f"{split}.hw.tsv", label=f"{split}.label.tsv",
                        linelist=f"{split}.linelist.tsv", domain="hand", seed=seed, test=split == "test",
                        keys=[f"{i:08d}.jpg" for i in range(rows)], **kw)
            write_yaml(d / f"{split}.yaml", {k: f"{split}.{k}.tsv" for k in ("img", "hw", "label", "linelist")})
    elif name == COMPOSITE:
        lines = [(str(s), str(r)) for s in range(len(COMPOSITE_SOURCES)) for r in range(rows)
                 if not (COMPOSITE_SOURCES[s][0] == "muco" and r == 2)]
        write_tsv(d / "train.linelist.tsv", lines)
        write_yaml(d / "train.yaml", {
            "composite": True,
            "img": [f"../{ds}/{img}" for ds, img, _, _ in COMPOSITE_SOURCES],
            "hw": [f"../{ds}/{hw}" for ds, _, hw, _ in COMPOSITE_SOURCES],
            "label": [f"../{ds}/{lab}" for ds, _, _, lab in COMPOSITE_SOURCES],
            "linelist": "train.linelist.tsv"})
    else:
        raise ValueError(name)
    return d


def build_all(out: Path, *, rows: int = 4) -> Dict[str, Path]:
    return {n: build_dataset(out, n, rows=rows) for n in NAMES}


# --------------------------------------------------------------------------- tars

def make_tar(src: Path, tar_path: Path, *, layout: str = "rooted", format: int = tarfile.GNU_FORMAT) -> Path:
    """Tar the dataset folder ``src`` as layout rooted (``<name>/``), dot (``./<name>/``),
    datasets (``datasets/<name>/``) or flat."""
    prefix = {"rooted": src.name, "dot": f"./{src.name}", "datasets": f"datasets/{src.name}", "flat": ""}[layout]
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w", format=format) as tf:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            arc = f"{prefix}/{rel}" if prefix else rel
            tf.add(p, arcname=arc, recursive=False)
    return tar_path


EVIL_KINDS = ("absolute", "dotdot", "symlink", "hardlink", "device", "fifo", "setuid", "sticky", "duplicate",
              "outside-root")


def evil_tar(tar_path: Path, kind: str, name: str = "freihand") -> Tuple[Path, str]:
    """A tar with one good file then one malicious member; returns (path, the bad member's name)."""
    buf = io.BytesIO()
    good = b"ok\tfine\n"
    bad_name = ""
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def add(ti: tarfile.TarInfo, data: bytes = b"") -> None:
            ti.size = len(data) if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add(tarfile.TarInfo(f"{name}/good.tsv"), good)
        ti = tarfile.TarInfo(f"{name}/evil")
        data = b"evil\n"
        if kind == "absolute":
            ti.name = "/tmp/metro-evil-absolute"
        elif kind == "dotdot":
            ti.name = f"{name}/../../metro-evil-dotdot"
        elif kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            ti.type, ti.linkname = tarfile.LNKTYPE, f"{name}/good.tsv"
        elif kind == "device":
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            ti.type = tarfile.FIFOTYPE
        elif kind == "setuid":
            ti.mode = 0o4755
        elif kind == "sticky":
            ti.mode = 0o1644
        elif kind == "duplicate":
            ti.name = f"{name}/good.tsv"
            data = b"evil\tdup\n"
        elif kind == "outside-root":
            ti.name = "other/evil"
        else:
            raise ValueError(kind)
        bad_name = ti.name
        add(ti, data)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tar_path.write_bytes(buf.getvalue())
    return tar_path, bad_name


def big_dataset(out: Path, name: str, target_bytes: int, *, image_bytes: int = 90_000, seed: int = 0) -> Path:
    """A dataset of about ``target_bytes`` (mostly img rows) for benchmarks."""
    rows = max(1, int(target_bytes / (image_bytes * 4 / 3 + 200)))
    d = out / name
    write_split(d, img="train.img.tsv", hw="train.hw.tsv", label="train.label.tsv", linelist="train.linelist.tsv",
                rows=rows, domain="hand" if name == "freihand" else "body", seed=seed, image_bytes=image_bytes,
                keys=[f"{i:08d}.jpg" for i in range(rows)])
    write_yaml(d / "train.yaml", {k: f"train.{k}.tsv" for k in ("img", "hw", "label", "linelist")})
    return d
