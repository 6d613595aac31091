"""The METRO body and hand networks (spec sections 1, 5 and 7).

``forward(images, reference)`` takes the template tokens explicitly
(``reference``: (1, T, 3) from :mod:`metro_assets.model.template`), so the
network holds no SMPL/MANO state and its state dict is exactly upstream's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch
from torch import nn

from metro_assets.model.config import BACKBONE_POSITIONS, MetroConfig, get_config
from metro_assets.model.hrnet import HighResolutionNet
from metro_assets.model.transformer import MetroBlock


@dataclass(frozen=True)
class MetroOutput:
    """Network outputs with the batch axis kept (upstream squeezes ``cam`` at B=1)."""

    cam: torch.Tensor                       # (B, 3) weak-perspective (s, tx, ty)
    joints: torch.Tensor                    # (B, 14|21, 3)
    vertices_sub: torch.Tensor              # body (B, 1723, 3); hand (B, 195, 3)
    vertices: torch.Tensor                  # body (B, 6890, 3); hand (B, 778, 3)
    vertices_sub2: Optional[torch.Tensor] = None  # body only: (B, 431, 3)

    def arrays(self) -> Dict[str, torch.Tensor]:
        """Named outputs in upstream's return order (GOLDEN.md section 5 names)."""
        out = {"cam": self.cam, "joints": self.joints}
        if self.vertices_sub2 is not None:
            out["vertices_sub2"] = self.vertices_sub2
        out["vertices_sub"] = self.vertices_sub
        out["vertices"] = self.vertices
        return out


def _camera(fc1: nn.Linear, fc2: nn.Linear, fc3: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    x = fc1(tokens).transpose(1, 2)      # (B, 1, T)
    x = fc3(fc2(x))                      # (B, 1, 3), no activation in between
    return x.transpose(1, 2)[:, :, 0]    # (B, 3)


class MetroBodyNetwork(nn.Module):
    def __init__(self, cfg: MetroConfig) -> None:
        super().__init__()
        assert cfg.kind == "body"
        self.cfg = cfg
        self.backbone = HighResolutionNet(cfg.backbone)
        self.trans_encoder = nn.Sequential(*[MetroBlock(b) for b in cfg.blocks])
        self.upsampling = nn.Linear(431, 1723)
        self.upsampling2 = nn.Linear(1723, 6890)
        self.conv_learn_tokens = nn.Conv1d(BACKBONE_POSITIONS, cfg.num_tokens, 1)
        self.cam_param_fc = nn.Linear(3, 1)
        self.cam_param_fc2 = nn.Linear(431, 250)
        self.cam_param_fc3 = nn.Linear(250, 3)

    def forward(self, images: torch.Tensor, reference: torch.Tensor,
                trace: Optional[Dict[str, torch.Tensor]] = None) -> MetroOutput:
        b = images.shape[0]
        ref = reference.expand(b, -1, -1)
        feat = self.backbone(images)                                   # (B, C, 7, 7)
        img_tokens = self.conv_learn_tokens(feat.view(b, feat.shape[1], -1).transpose(1, 2))
        x = torch.cat([ref, img_tokens], dim=2)                        # xyz first
        blocks = run_blocks(self.trans_encoder, x, trace, backbone_out=feat, img_tokens=img_tokens,
                            template_tokens=reference)
        nj = self.cfg.num_joints
        joints, v431 = blocks[:, :nj], blocks[:, nj:]
        cam = _camera(self.cam_param_fc, self.cam_param_fc2, self.cam_param_fc3, v431)
        v1723 = self.upsampling(v431.transpose(1, 2))
        v6890 = self.upsampling2(v1723)
        return MetroOutput(cam=cam, joints=joints, vertices_sub2=v431,
                           vertices_sub=v1723.transpose(1, 2), vertices=v6890.transpose(1, 2))


class MetroHandNetwork(nn.Module):
    def __init__(self, cfg: MetroConfig) -> None:
        super().__init__()
        assert cfg.kind == "hand"
        self.cfg = cfg
        self.backbone = HighResolutionNet(cfg.backbone)
        self.trans_encoder = nn.Sequential(*[MetroBlock(b) for b in cfg.blocks])
        self.upsampling = nn.Linear(195, 778)
        self.cam_param_fc = nn.Linear(3, 1)
        self.cam_param_fc2 = nn.Linear(cfg.num_tokens, 150)
        self.cam_param_fc3 = nn.Linear(150, 3)

    def forward(self, images: torch.Tensor, reference: torch.Tensor,
                trace: Optional[Dict[str, torch.Tensor]] = None) -> MetroOutput:
        b = images.shape[0]
        ref = reference.expand(b, -1, -1)
        feat = self.backbone(images)                                   # (B, C) pooled
        x = torch.cat([ref, feat.view(b, 1, -1).expand(-1, ref.shape[1], -1)], dim=2)
        tokens = run_blocks(self.trans_encoder, x, trace, backbone_out=feat, template_tokens=reference)
        nj = self.cfg.num_joints
        joints, v195 = tokens[:, :nj], tokens[:, nj:]
        cam = _camera(self.cam_param_fc, self.cam_param_fc2, self.cam_param_fc3, tokens)  # all 216 tokens
        v778 = self.upsampling(v195.transpose(1, 2)).transpose(1, 2)
        return MetroOutput(cam=cam, joints=joints, vertices_sub=v195, vertices=v778)


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, trace: Optional[Dict[str, torch.Tensor]],
               **extra: torch.Tensor) -> torch.Tensor:
    """Apply the three METRO blocks; record intermediates in ``trace`` when given."""
    if trace is not None:
        trace.update(extra)
    for i, block in enumerate(blocks):
        x = block(x)
        if trace is not None:
            trace[f"block{i}_out"] = x
    return x


MetroNetwork = Union[MetroBodyNetwork, MetroHandNetwork]


def build_model(cfg: Union[MetroConfig, str], *, device: Union[str, torch.device, None] = None,
                dtype: Optional[torch.dtype] = None) -> MetroNetwork:
    """Construct a network; ``device='meta'`` allocates nothing (for ``assign=True`` loads)."""
    if isinstance(cfg, str):
        cfg = get_config(cfg)
    cls = MetroBodyNetwork if cfg.kind == "body" else MetroHandNetwork
    with torch.device(device or "cpu"):
        model = cls(cfg)
    if dtype is not None:
        model = model.to(dtype)
    return model
