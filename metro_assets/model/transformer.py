"""METRO transformer block (spec section 6): BERT-style post-norm encoder layers.

Key names copy pytorch-transformers 1.1.0 ``BertModel`` as METRO subclasses it,
including the dead ``bert.embeddings`` / ``bert.pooler`` weights a strict load
needs.  The maths follows the exactness notes (spec section 10): TF-style
LayerNorm with eps inside the sqrt, erf GELU, scores divided after q @ k^T.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from metro_assets.model.config import BlockConfig


class BertLayerNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight * x + self.bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class _Embeddings(nn.Module):
    """Word/position/type tables of BERT: saved in every checkpoint, never used."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = BertLayerNorm(cfg.hidden_size, cfg.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_size = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = torch.softmax(scores + mask, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _DenseNorm(nn.Module):
    """``dense`` then LayerNorm(dense(x) + residual): BertSelfOutput / BertOutput."""

    def __init__(self, cin: int, cout: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = BertLayerNorm(cout, eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))


class _Pooler(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)  # saved, never called


class MetroEncoder(nn.Module):
    """Upstream ``METRO_Encoder`` (the ``bert.`` prefix)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.pooler = _Pooler(cfg)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.img_embedding = nn.Linear(cfg.input_dim, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.position_embeddings.weight[:t].unsqueeze(0) + self.img_embedding(x)
        # an all-ones attention mask becomes (1 - 1) * -10000 = -0.0: kept for bit-exactness
        ones = torch.ones(b, 1, 1, t, dtype=x.dtype, device=x.device)
        mask = (1.0 - ones) * -10000.0
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h


class MetroBlock(nn.Module):
    """Upstream ``METRO``: out = cls_head(bert(x)) + residual(x)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.bert = MetroEncoder(cfg)
        self.cls_head = nn.Linear(cfg.hidden_size, cfg.output_dim)
        self.residual = nn.Linear(cfg.input_dim, cfg.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.bert(x)) + self.residual(x)
