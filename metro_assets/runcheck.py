"""run-check: prove that each METRO checkpoint is the network it claims to be and predicts a mesh.

For each checkpoint: strict safe load (kind and arch inferred from shapes),
template tokens from the root's SMPL/MANO + support data (or an explicit
override), one eval forward pass, finiteness and shape checks, and on CUDA a
comparison with the CPU result (TF32 off).  Returns a frozen result; the CLI
only renders it.  torch is imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import gc

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from metro_assets.errors import (EXIT_FAILED, EXIT_OK, ActionRequired, LoadError, MetroAssetsError,
                                 MissingDependency, UsageError)

TARGETS = ("body", "hand", "all")
CHECKPOINTS: Tuple[Tuple[str, str, str], ...] = (
    # asset id, kind, path inside the root
    ("metro-h36m", "body", "models/metro_release/metro_h36m_state_dict.bin"),
    ("metro-3dpw", "body", "models/metro_release/metro_3dpw_state_dict.bin"),
    ("metro-hand", "hand", "models/metro_release/metro_hand_state_dict.bin"),
)
CUDA_TOLERANCE = 1e-4   # GOLDEN.md section 7: CUDA, TF32 off


@dataclass(frozen=True)
class CheckpointCheck:
    """The result for one checkpoint."""

    name: str                            # asset id, or the file name for --checkpoint
    path: str
    expected_kind: Optional[str]
    ok: bool
    kind: Optional[str] = None
    arch: Optional[str] = None
    variant: Optional[str] = None
    format: Optional[str] = None
    keys_loaded: int = 0
    tensor_bytes: int = 0
    file_bytes: int = 0
    load_seconds: float = 0.0
    forward_seconds: float = 0.0
    device: str = "cpu"
    peak_rss_bytes: Optional[int] = None
    peak_cuda_bytes: Optional[int] = None
    output_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    non_finite: Tuple[str, ...] = ()
    cuda_max_abs_diff: Optional[float] = None
    template_source: Optional[str] = None
    outputs_path: Optional[str] = None
    mesh_path: Optional[str] = None
    render_path: Optional[str] = None
    error: Optional[Dict[str, Any]] = None

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["output_shapes"] = {k: list(v) for k, v in self.output_shapes.items()}
        out["non_finite"] = list(self.non_finite)
        return out


@dataclass(frozen=True)
class RunCheckResult:
    target: str
    root: str
    device: str
    input: str
    checks: Tuple[CheckpointCheck, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def to_json(self) -> dict:
        return {"ok": self.ok, "exit_code": self.exit_code, "target": self.target, "root": self.root,
                "device": self.device, "input": self.input, "checks": [c.to_json() for c in self.checks]}


# --------------------------------------------------------------------------- helpers

def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependency("run-check needs PyTorch", expected="torch installed", got="not installed",
                                next_command="pip install 'metro-assets[model]'") from None
    return torch


def resolve_device(device: str) -> str:
    torch = _torch()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"Unknown device {device!r}", expected="auto, cpu or cuda", got=repr(device))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available",
                         expected="a CUDA build of torch and a visible GPU", got=f"torch {torch.__version__}",
                         next_command="metro-assets run-check ... --device cpu")
    return device


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so peaks are per checkpoint."""
    gc.collect()
    try:  # hand freed heap back to the OS first, so one checkpoint's leftovers don't count for the next
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def numbered(path: Optional[Path], name: str, many: bool) -> Optional[Path]:
    """OUT.npz stays OUT.npz for one checkpoint; with several it becomes OUT.<name>.npz."""
    if path is None:
        return None
    path = Path(path)
    return path.with_name(f"{path.stem}.{name}{path.suffix}") if many else path


def _missing_checkpoint(name: str, path: Path, kind: str) -> LoadError:
    return LoadError(f"Missing checkpoint {name}: {path}", expected="the release file in the root", got="no file",
                     next_command=f"metro-assets fetch {kind} --mirror BASE  (or: metro-assets import PATH)")


def _select(target: str, root: Path, checkpoint: Optional[Path]) -> List[Tuple[str, Optional[str], Path]]:
    if target not in TARGETS:
        raise UsageError(f"Unknown run-check target {target!r}", expected="body, hand or all", got=repr(target))
    if checkpoint is not None:
        return [(Path(checkpoint).name, None if target == "all" else target, Path(checkpoint))]
    if target == "all":
        present = [(n, k, root / p) for n, k, p in CHECKPOINTS if (root / p).is_file()]
        if not present:
            raise LoadError(f"No METRO checkpoint under {root}", expected="models/metro_release/metro_*_state_dict.bin",
                            got="none present", next_command="metro-assets fetch checkpoints --mirror BASE  (or: metro-assets import PATH)")
        return present
    return [(n, k, root / p) for n, k, p in CHECKPOINTS if k == target]


# --------------------------------------------------------------------------- the check

def run_check(target: str, *, root: Optional[Path] = None, device: str = "auto", checkpoint: Optional[Path] = None,
              image: Optional[Path] = None, template: Optional[Path] = None, save_outputs: Optional[Path] = None,
              save_mesh: Optional[Path] = None, render: Optional[Path] = None) -> RunCheckResult:
    """Check ``target`` (body | hand | all) under ``root``; see module docstring."""
    from metro_assets.settings import resolve

    settings = resolve(root=root)
    targets = _select(target, settings.root, checkpoint)
    torch = _torch()
    dev = resolve_device(device)

    from metro_assets.model.image import builtin_input, load_image

    if image is not None:
        x, rgb = load_image(Path(image))
        input_desc = str(image)
    else:
        x, rgb = builtin_input()
        input_desc = "built-in (golden image)"
    images = torch.from_numpy(x)
    many = len(targets) > 1
    templates: Dict[str, Any] = {}
    checks: List[CheckpointCheck] = []
    for name, kind, path in targets:
        checks.append(_check_one(torch, name, kind, path, settings.root, dev, images, rgb, template, templates,
                                 numbered(save_outputs, name, many), numbered(save_mesh, name, many),
                                 numbered(render, name, many)))
        gc.collect()
    return RunCheckResult(target, str(settings.root), dev, input_desc, tuple(checks))


def _template(kind: str, root: Path, override: Optional[Path], cache: Dict[str, Any]):
    from metro_assets.model.template import TemplateOverride, load_template

    if kind not in cache:
        ov = TemplateOverride.from_npz(Path(override), kind) if override is not None else None
        try:
            cache[kind] = load_template(kind, root, ov)
        except LoadError as exc:
            if exc.got == "no file" and exc.next_command and "import" in exc.next_command:
                # SMPL / MANO are licence-gated: only the user can fetch them
                raise ActionRequired(exc.what, expected=exc.expected, got=exc.got,
                                     did="SMPL and MANO cannot be downloaded for you (licence)",
                                     next_command=exc.next_command) from None
            raise
    return cache[kind]


def _forward(torch, model, images, reference):
    with torch.no_grad():
        return model(images, reference)


def _check_one(torch, name: str, kind: Optional[str], path: Path, root: Path, dev: str, images, rgb,
               override: Optional[Path], templates: Dict[str, Any], out_npz: Optional[Path],
               out_obj: Optional[Path], out_png: Optional[Path]) -> CheckpointCheck:
    import numpy as np

    from metro_assets.model.checkpoint import infer_kind, load_checkpoint, read_state_dict

    base = dict(name=name, path=str(path), expected_kind=kind, device=dev)
    if not path.is_file():
        err = _missing_checkpoint(name, path, kind or "checkpoints")
        return CheckpointCheck(ok=False, error=err.to_json(), **base)
    try:
        if kind is None:  # --checkpoint with 'all': the file decides (metadata only, meta device)
            kind = infer_kind(read_state_dict(path, map_location="meta")[0])
            base["expected_kind"] = kind
        tmpl = _template(kind or "body", root, override, templates)
        _reset_peak_rss()
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        # CPU first (the CUDA check compares against it); a model bound for the GPU is read in full
        loaded = load_checkpoint(path, expect_kind=kind, device="cpu", read_unused=dev.startswith("cuda"))
        report = loaded.report
        model = loaded.model
        ref = tmpl.reference
        cuda_diff = None
        t0 = time.perf_counter()
        out = _forward(torch, model, images, ref)
        fwd = time.perf_counter() - t0
        if dev.startswith("cuda"):
            cpu_out = {k: v.clone() for k, v in out.arrays().items()}
            prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            try:
                model.to(dev)
                _forward(torch, model, images.to(dev), ref.to(dev))   # warm-up (cuDNN autotune, allocation)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = _forward(torch, model, images.to(dev), ref.to(dev))
                torch.cuda.synchronize()
                fwd = time.perf_counter() - t0
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
            cuda_diff = max(float((out.arrays()[k].cpu() - v).abs().max()) for k, v in cpu_out.items())
        arrays = {k: v.detach().float().cpu().numpy() for k, v in out.arrays().items()}
        del out, model, loaded
        gc.collect()
        peak_rss = _peak_rss()
        peak_cuda = int(torch.cuda.max_memory_allocated()) if dev.startswith("cuda") else None
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        non_finite = tuple(k for k, v in arrays.items() if not np.isfinite(v).all())
        expected_shapes = _expected_shapes(report.variant, images.shape[0])
        bad_shape = {k: s for k, s in shapes.items() if expected_shapes.get(k) != s}
        written = {}
        if out_npz is not None:
            written["outputs_path"] = str(_save_npz(out_npz, arrays))
        if out_obj is not None:
            from metro_assets.model.mesh_io import write_obj

            written["mesh_path"] = str(write_obj(out_obj, arrays["vertices"][0], tmpl.faces))
        if out_png is not None:
            from metro_assets.model.render import render_overlay

            render_overlay(rgb, arrays["vertices"][0], tmpl.faces, arrays["cam"][0], out_png)
            written["render_path"] = str(out_png)
        error = None
        if non_finite:
            error = LoadError(f"{name} produced non-finite outputs", expected="finite values",
                              got=", ".join(non_finite)).to_json()
        elif bad_shape:
            error = LoadError(f"{name} produced wrong output shapes", expected=str(expected_shapes),
                              got=str(bad_shape)).to_json()
        elif cuda_diff is not None and not cuda_diff <= CUDA_TOLERANCE:
            error = LoadError(f"{name}: CUDA and CPU outputs differ by {cuda_diff:.3g}",
                              expected=f"at most {CUDA_TOLERANCE} (TF32 off)", got=f"{cuda_diff:.3g}").to_json()
        return CheckpointCheck(
            ok=error is None, kind=report.kind, arch=report.arch, variant=report.variant, format=report.format,
            keys_loaded=report.num_keys, tensor_bytes=report.tensor_bytes, file_bytes=path.stat().st_size,
            load_seconds=report.seconds, forward_seconds=fwd, peak_rss_bytes=peak_rss, peak_cuda_bytes=peak_cuda,
            output_shapes=shapes, non_finite=non_finite, cuda_max_abs_diff=cuda_diff, template_source=tmpl.source,
            error=error, **written, **base)
    except (ActionRequired, MissingDependency, UsageError):
        raise
    except MetroAssetsError as exc:
        return CheckpointCheck(ok=False, error=exc.to_json(), file_bytes=_size(path), **base)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _expected_shapes(variant: Optional[str], batch: int) -> Dict[str, Tuple[int, ...]]:
    from metro_assets.model.config import get_config

    return get_config(variant).output_shapes(batch) if variant else {}


def _save_npz(path: Path, arrays: Dict[str, Any]) -> Path:
    import io

    import numpy as np

    from metro_assets.store import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    atomic_write_bytes(Path(path), buf.getvalue(), durable=False)
    return Path(path)


__all__ = ["CheckpointCheck", "RunCheckResult", "run_check", "resolve_device", "numbered", "CHECKPOINTS"]
