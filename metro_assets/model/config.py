"""One frozen config per network variant (timm style), no torch import.

The released networks are ``body-w64`` (metro_h36m / metro_3dpw) and
``hand-w64`` (metro_hand); ``*-w40`` are upstream's ``--arch hrnet`` variant.
``*-tiny`` configs keep every structural feature (all stages, fuse layers,
head, three METRO blocks, the real mesh sizes) at toy widths so tests run in
seconds.  Numbers come from spec/ARCHITECTURE.md sections 1, 3 and 6.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Tuple

from metro_assets.errors import UsageError

# Mesh sizes fixed by SMPL / MANO and the support data (spec section 4).
BODY_JOINTS, BODY_VERTS_SUB2, BODY_VERTS_SUB, BODY_VERTS = 14, 431, 1723, 6890
HAND_JOINTS, HAND_VERTS_SUB, HAND_VERTS = 21, 195, 778
BACKBONE_POSITIONS = 49  # the 7x7 map of a 224x224 input, hard-wired in conv_learn_tokens


@dataclass(frozen=True)
class HRNetConfig:
    """HRNet classification net (HRNet-Image-Classification ``MODEL.EXTRA``)."""

    width: int = 64                                # C: branch widths are C, 2C, 4C, 8C
    stem_channels: int = 64
    layer1_planes: int = 64                        # Bottleneck planes of stage 1 (output 4x)
    layer1_blocks: int = 4
    num_modules: Tuple[int, int, int] = (1, 4, 3)  # stages 2, 3, 4
    num_blocks: int = 4                            # BasicBlocks per branch
    head_channels: Tuple[int, int, int, int] = (32, 64, 128, 256)
    final_channels: int = 2048
    num_classes: int = 1000                        # classifier is built and saved, never called
    pooled: bool = False                           # hand: global average pool to (B, C)

    @property
    def branch_channels(self) -> Tuple[int, int, int, int]:
        c = self.width
        return (c, 2 * c, 4 * c, 8 * c)


@dataclass(frozen=True)
class BlockConfig:
    """One METRO block: a 4-layer BERT encoder between two linear maps."""

    input_dim: int
    hidden_size: int
    intermediate_size: int
    output_dim: int
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 30522          # dead weights, kept for a strict load
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class MetroConfig:
    name: str
    kind: str                         # "body" | "hand"
    arch: str                         # "w64" | "w40" | "tiny"
    backbone: HRNetConfig
    blocks: Tuple[BlockConfig, BlockConfig, BlockConfig]

    @property
    def num_joints(self) -> int:
        return BODY_JOINTS if self.kind == "body" else HAND_JOINTS

    @property
    def num_coarse_vertices(self) -> int:
        return BODY_VERTS_SUB2 if self.kind == "body" else HAND_VERTS_SUB

    @property
    def num_vertices(self) -> int:
        return BODY_VERTS if self.kind == "body" else HAND_VERTS

    @property
    def num_tokens(self) -> int:
        return self.num_joints + self.num_coarse_vertices

    def output_shapes(self, batch: int = 1) -> Dict[str, Tuple[int, ...]]:
        if self.kind == "body":
            return {"cam": (batch, 3), "joints": (batch, BODY_JOINTS, 3),
                    "vertices_sub2": (batch, BODY_VERTS_SUB2, 3), "vertices_sub": (batch, BODY_VERTS_SUB, 3),
                    "vertices": (batch, BODY_VERTS, 3)}
        return {"cam": (batch, 3), "joints": (batch, HAND_JOINTS, 3),
                "vertices_sub": (batch, HAND_VERTS_SUB, 3), "vertices": (batch, HAND_VERTS, 3)}


def _blocks(kind: str, feat: int, hidden: Tuple[int, int, int], ffn: Tuple[int, int, int],
            out: Tuple[int, int, int] = (512, 128, 3), **kw) -> Tuple[BlockConfig, BlockConfig, BlockConfig]:
    ins = (3 + feat, out[0], out[1])  # block 0 sees xyz + backbone feature
    return tuple(BlockConfig(ins[i], hidden[i], ffn[i], out[i], **kw) for i in range(3))  # type: ignore[return-value]


def _released(kind: str, width: int) -> MetroConfig:
    backbone = HRNetConfig(width=width, pooled=(kind == "hand"))
    if kind == "body":
        # upstream's --legacy_setting can never be turned off: FFN 3072 everywhere
        blocks = _blocks(kind, 2048, (1024, 256, 128), (3072, 3072, 3072))
    else:
        blocks = _blocks(kind, 2048, (1024, 256, 64), (4096, 1024, 256))
    return MetroConfig(f"{kind}-w{width}", kind, f"w{width}", backbone, blocks)


def _tiny(kind: str) -> MetroConfig:
    backbone = HRNetConfig(width=4, stem_channels=8, layer1_planes=4, layer1_blocks=2, num_modules=(1, 2, 1),
                           num_blocks=1, head_channels=(2, 4, 8, 16), final_channels=32, num_classes=10,
                           pooled=(kind == "hand"))
    hidden = (32, 16, 8) if kind == "body" else (32, 16, 8)
    blocks = _blocks(kind, 32, hidden, (48, 32, 16), out=(16, 8, 3), num_layers=2, num_heads=2, vocab_size=11)
    return MetroConfig(f"{kind}-tiny", kind, "tiny", backbone, blocks)


VARIANTS: Dict[str, MetroConfig] = {
    c.name: c for c in (_released("body", 64), _released("hand", 64), _released("body", 40),
                        _released("hand", 40), _tiny("body"), _tiny("hand"))
}

# Which variant each released checkpoint file is (spec/metro_data_files.json).
RELEASED = {"metro_h36m_state_dict.bin": "body-w64", "metro_3dpw_state_dict.bin": "body-w64",
            "metro_hand_state_dict.bin": "hand-w64"}


def get_config(name: str) -> MetroConfig:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UsageError(f"Unknown METRO variant {name!r}", expected="one of " + ", ".join(VARIANTS),
                         got=repr(name)) from None


def with_backbone(cfg: MetroConfig, **changes) -> MetroConfig:
    return replace(cfg, backbone=replace(cfg.backbone, **changes))
