"""The full-size networks, built on the meta device, have exactly the spec's state-dict keys.

Digests are sha256 over ``key [shape] dtype`` lines of shared/spec/*.state_dict.json
(upstream's key lists), pinned here so the test needs no copy of the 2 MB JSON files.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from metro_assets.model.checkpoint import expected_signature, hrnet_signature, signature_digest  # noqa: E402
from metro_assets.model.metro import build_model  # noqa: E402

SPEC = {
    # variant: (keys, sha256 of the listing, parameters, tensor bytes)
    "body-w64": (2202, "0cc74f77c1d10e26b9c7bf92556e96010d0015bad13c6f723aedc9efe3d07b7e", 243070293, 972796284),
    "hand-w64": (2198, "d7765528945ef2c691ddb41b2066a267b9428a9dc271d403ae81c1d719d594e3", 229427461, 918224956),
    "body-w40": (2202, "a5d0d4edb4bb3ac138d506434fca17b6687de8f35091a16cc4288ab453be3a8b", 172567509, 690624636),
    "hand-w40": (2198, "e65b70becd63b5f72031833747575b99f67c7e93ef19b0e260e0ab6045cd8f9e", 158924677, 636053308),
}
HRNET = {64: (1956, "0059a63ad6e14afb8a06e6b50fda70f94825a0de2c2c5f877df33f84c2b843cd"),
         40: (1956, "4ef46a4c6fc6320151cfbc17a34fe8cc731362484b399a35c5fe02b9d8d70458")}


@pytest.mark.parametrize("variant", sorted(SPEC))
def test_meta_network_matches_spec_key_list(variant):
    n_keys, digest, n_params, n_bytes = SPEC[variant]
    sig = expected_signature(variant)
    assert len(sig) == n_keys
    assert signature_digest(sig) == digest
    model = build_model(variant, device="meta")
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert sum(v.numel() * v.element_size() for v in model.state_dict().values()) == n_bytes
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("width", [64, 40])
def test_imagenet_hrnet_key_list(width):
    n_keys, digest = HRNET[width]
    sig = hrnet_signature(width)
    assert len(sig) == n_keys and signature_digest(sig) == digest


def test_released_structure_details():
    sig = dict((k, s) for k, s, _ in expected_signature("body-w64"))
    assert sig["conv_learn_tokens.weight"] == (445, 49, 1)
    assert sig["backbone.bn1.num_batches_tracked"] == ()
    assert not any("position_ids" in k for k in sig)        # later transformers add it; upstream has none
    assert not any(k.endswith("bert.LayerNorm.weight") for k in sig)  # no image LayerNorm
    hand = dict((k, s) for k, s, _ in expected_signature("hand-w64"))
    assert "upsampling2.weight" not in hand
    assert hand["trans_encoder.2.bert.encoder.layer.0.intermediate.dense.weight"] == (256, 64)
