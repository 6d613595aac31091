"""run-check: load each METRO checkpoint strictly and predict a mesh.  torch is imported only when it runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import EXIT_CODES_HELP, JsonOpt, RootOpt, guarded

PathOpt = Optional[Path]


@app.command("run-check", help=(
    "Load each METRO checkpoint strictly into the bundled network and predict a mesh.\n\n"
    "TARGET: 'body' checks metro_h36m and metro_3dpw, 'hand' checks metro_hand, 'all' every one present. "
    "Body vs hand and W64 vs W40 are inferred from the tensor shapes; missing, unexpected or mis-shaped keys fail "
    "the check (upstream's strict=False would hide them). The template mesh comes from SMPL/MANO and the support "
    "data under ROOT/metro/modeling/data. Without --image a deterministic built-in input is used. On CUDA the "
    "outputs are also compared with CPU (TF32 off). Needs torch: pip install 'metro-assets[model]'.\n\n"
    + EXIT_CODES_HELP))
@guarded
def run_check_cmd(
    target: Annotated[str, typer.Argument(help="body | hand | all", show_default=False)],
    root: RootOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")] = "auto",
    checkpoint: Annotated[PathOpt, typer.Option("--checkpoint", help="Check this file instead of the root's release checkpoints.", show_default=False)] = None,
    image: Annotated[PathOpt, typer.Option("--image", help="RGB input image (shorter side to 224, centre crop). Default: built-in input.", show_default=False)] = None,
    template: Annotated[PathOpt, typer.Option("--template", help="Body-model output to use instead of SMPL/MANO: an .npz with body_template_vertices (6890,3) m, or hand_template_vertices (778,3) and hand_template_joints (21,3) mm.", show_default=False)] = None,
    save_outputs: Annotated[PathOpt, typer.Option("--save-outputs", help="Write cam, joints, vertices_sub2 (body), vertices_sub, vertices as float32 .npz (with several checkpoints: OUT.<name>.npz).", show_default=False)] = None,
    save_mesh: Annotated[PathOpt, typer.Option("--save-mesh", help="Write the full-resolution mesh as .obj.", show_default=False)] = None,
    render: Annotated[PathOpt, typer.Option("--render", help="Draw the mesh over the input image (.png).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    from metro_assets.runcheck import run_check

    result = run_check(target, root=root, device=device, checkpoint=checkpoint, image=image, template=template,
                       save_outputs=save_outputs, save_mesh=save_mesh, render=render)
    if json_out:
        console.print_json(result.to_json())
    else:
        _print(result)
    raise typer.Exit(result.exit_code)


def _mb(n: Optional[int]) -> str:
    return console.human_bytes(n) if n is not None else "-"


def _print(result) -> None:
    console.out(f"run-check {result.target}: root {result.root}, device {result.device}, input {result.input}")
    rows = []
    for c in result.checks:
        status = console.status_text("ok" if c.ok else "failed")
        rows.append([c.name, status, c.kind or c.expected_kind or "-", c.arch or "-", c.format or "-",
                     str(c.keys_loaded or "-"), f"{c.load_seconds:.2f}s", f"{c.forward_seconds:.2f}s",
                     _mb(c.peak_rss_bytes) + (f" / cuda {_mb(c.peak_cuda_bytes)}" if c.peak_cuda_bytes is not None else "")])
    console.table(None, ["checkpoint", "status", "kind", "arch", "format", "keys", "load", "forward", "peak memory"], rows)
    for c in result.checks:
        if c.ok:
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in c.output_shapes.items())
            console.out(f"{c.name}: outputs {shapes}; all finite")
            if c.cuda_max_abs_diff is not None:
                console.out(f"{c.name}: CUDA vs CPU max abs diff {c.cuda_max_abs_diff:.3g} (TF32 off)")
            for label, p in (("outputs", c.outputs_path), ("mesh", c.mesh_path), ("picture", c.render_path)):
                if p:
                    console.out(f"{c.name}: wrote {label} {p}")
        else:
            console.err(f"error: {c.name}: {c.error.get('message') if c.error else 'failed'}")
