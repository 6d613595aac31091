"""Golden reference: our networks + the formula checkpoint reproduce upstream's outputs.

The arrays in tests/data/golden/ are upstream's forward pass (MeshTransformer
cefc4af) on the GOLDEN.md formula weights; the full-size checkpoint is built in
memory, written with torch.save (zip for body, legacy for hand) and read back
through the strict loader run-check uses.  Tolerance 1e-5 absolute (GOLDEN.md §6).
Takes ~30 s and ~2.5 GB RSS on 2 cores.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metro_assets.model.checkpoint import load_checkpoint  # noqa: E402
from metro_assets.model.golden import golden_inputs, golden_state_dict, mix32, golden_uniform, tensors_sha256  # noqa: E402
from metro_assets.model.template import body_reference, hand_reference, load_body_support, load_hand_support  # noqa: E402

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
SHA = json.loads((GOLDEN / "SHA256.json").read_text())
ATOL = 1e-5


def _golden(name: str):
    with np.load(GOLDEN / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in arrays.items():
        assert hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() == SHA["arrays"][f"{name}.npz"][k]["sha256"], k
    return arrays


def test_formula_check_values():
    assert mix32(1) == 124067608 and mix32(12345) == 2107792481 and mix32(0) == 0
    np.testing.assert_array_equal(golden_uniform(0, 4),
                                  [-0.8617285490036011, 0.6983045339584351, 0.4695030450820923, -0.8195757865905762])


def test_inputs_match_manifest():
    for k, v in golden_inputs().items():
        assert hashlib.sha256(v.tobytes()).hexdigest() == SHA["arrays"]["inputs.npz"][k]["sha256"], k


def test_template_tokens_from_support_data():
    inp = golden_inputs()
    body = body_reference(inp["body_template_vertices"], load_body_support(DATA / "metro-data"))
    hand = hand_reference(inp["hand_template_vertices"], inp["hand_template_joints"], load_hand_support(DATA / "metro-data"))
    np.testing.assert_allclose(body.numpy(), _golden("body")["template_tokens"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(hand.numpy(), _golden("hand")["template_tokens"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind,legacy", [("body", False), ("hand", True)])
def test_golden_forward(tmp_path, kind, legacy):
    inp = golden_inputs()
    want = _golden(kind)
    sd = golden_state_dict(f"{kind}-w64")
    assert tensors_sha256(sd) == SHA["checkpoint_sha256_all_tensors"][kind]
    path = tmp_path / f"metro_{kind}.bin"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    del sd
    loaded = load_checkpoint(path, expect_kind=kind)
    assert loaded.report.ok and loaded.report.variant == f"{kind}-w64"
    assert loaded.report.format == ("legacy" if legacy else "zip")
    if kind == "body":
        ref = body_reference(inp["body_template_vertices"], load_body_support(DATA / "metro-data"))
    else:
        ref = hand_reference(inp["hand_template_vertices"], inp["hand_template_joints"], load_hand_support(DATA / "metro-data"))
    trace = {}
    with torch.no_grad():
        out = loaded.model(torch.from_numpy(inp["image"]), ref, trace=trace)
    got = {**out.arrays(), **trace}
    worst = {}
    for name, expected in want.items():
        actual = got[name].numpy()
        if name == "cam":                # upstream squeezes the batch axis at B=1
            actual = actual.reshape(expected.shape)
        assert actual.shape == expected.shape, name
        worst[name] = float(np.abs(actual - expected).max())
        np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=name)
    print(kind, "max abs diff", max(worst.values()), worst)
