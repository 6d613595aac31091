"""HRNet classification network (spec section 3), feature-map and pooled variants.

Module names and registration order reproduce upstream's state-dict keys
exactly.  Summation orders follow the exactness notes (spec section 10).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from metro_assets.model.config import HRNetConfig


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


def conv1x1(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, 1, 0, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    def __init__(self, channels: List[int], num_blocks: int) -> None:
        super().__init__()
        self.num_branches = n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels)
        fuse = []
        for i in range(n):
            row: List[Optional[nn.Module]] = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(conv1x1(channels[j], channels[i]), nn.BatchNorm2d(channels[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(conv3x3(channels[j], channels[i], 2), nn.BatchNorm2d(channels[i])))
                        else:
                            steps.append(nn.Sequential(conv3x3(channels[j], channels[j], 2), nn.BatchNorm2d(channels[j]),
                                                       nn.ReLU(False)))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(False)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i in range(self.num_branches):
            # branch 0 term first, then j ascending (exactness note)
            y = xs[0] if i == 0 else self.fuse_layers[i][0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if i == j else self.fuse_layers[i][j](xs[j]))
            out.append(self.relu(y))
        return out


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _transition(pre: List[int], cur: List[int]) -> nn.ModuleList:
    layers: List[Optional[nn.Module]] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn_relu(pre[i], c, 1) if pre[i] != c else None)
        else:
            steps = []
            for j in range(i + 1 - len(pre)):
                out = c if j == i - len(pre) else pre[-1]
                steps.append(_conv_bn_relu(pre[-1], out, 2))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HighResolutionNet(nn.Module):
    """Returns (B, final, 7, 7) for a 224 input, or (B, final) when ``cfg.pooled``."""

    def __init__(self, cfg: HRNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg.stem_channels
        self.conv1 = conv3x3(3, s, 2)
        self.bn1 = nn.BatchNorm2d(s)
        self.conv2 = conv3x3(s, s, 2)
        self.bn2 = nn.BatchNorm2d(s)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, s, cfg.layer1_planes, cfg.layer1_blocks)
        ch = list(cfg.branch_channels)
        pre = [cfg.layer1_planes * Bottleneck.expansion]
        for stage, n_branches in ((2, 2), (3, 3), (4, 4)):
            cur = ch[:n_branches]
            setattr(self, f"transition{stage - 1}", _transition(pre, cur))
            setattr(self, f"stage{stage}", nn.Sequential(
                *[HighResolutionModule(cur, cfg.num_blocks) for _ in range(cfg.num_modules[stage - 2])]))
            pre = cur
        head = cfg.head_channels
        self.incre_modules = nn.ModuleList(
            make_layer(Bottleneck, ch[i], head[i], 1) for i in range(4))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(conv3x3(head[i] * 4, head[i + 1] * 4, 2, bias=True), nn.BatchNorm2d(head[i + 1] * 4),
                          nn.ReLU(inplace=True)) for i in range(3))
        self.final_layer = nn.Sequential(conv1x1(head[3] * 4, cfg.final_channels, bias=True),
                                         nn.BatchNorm2d(cfg.final_channels), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cfg.final_channels, cfg.num_classes)  # saved, never called

    @staticmethod
    def _next_inputs(transition: nn.ModuleList, ys: List[torch.Tensor]) -> List[torch.Tensor]:
        # a non-empty transition reads the stage's last (coarsest) output
        return [ys[i] if t is None else t(ys[-1]) for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = [x if t is None else t(x) for t in self.transition1]
        ys = self.stage2(ys)
        ys = self.stage3(self._next_inputs(self.transition2, ys))
        ys = self.stage4(self._next_inputs(self.transition3, ys))
        y = self.incre_modules[0](ys[0])
        for k in range(3):
            y = self.incre_modules[k + 1](ys[k + 1]) + self.downsamp_modules[k](y)  # incre term first
        y = self.final_layer(y)
        if self.cfg.pooled:
            # avg_pool2d over the whole map, not .mean(): bit-exact with upstream
            y = F.avg_pool2d(y, kernel_size=y.shape[2:]).flatten(1)
        return y
