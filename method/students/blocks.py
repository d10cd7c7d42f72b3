"""Building blocks shared by the students, named as in the authors' state dicts.

Shapes: B sequences of T positions, d hidden size, H heads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -1e10  # masked frames / tokens before a max or a pooling softmax, as released


class LinearLayer(nn.Module):
    """LayerNorm(in) -> Dropout -> Linear(in, out) -> ReLU; names as released (``LayerNorm``, ``net.1``)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(in_dim, eps=1e-5)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net(self.LayerNorm(x)))


class PositionalEncoding(nn.Module):
    """x + trainable position embedding -> LayerNorm -> Dropout."""

    def __init__(self, max_len: int, dim: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d) with T <= max_len."""
        x = x + self.position_embeddings.weight[: x.shape[1]]
        return self.dropout(self.LayerNorm(x))


class SelfAttentionCore(nn.Module):
    """Multi-head self-attention; -10000 added on padded keys; dropout on the probabilities."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) 1 = valid -> (B, T, d)."""
        b, t, d = x.shape

        def heads(h: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d/H)
            return h.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        bias = ((1.0 - mask) * -10000.0).to(x.dtype)[:, None, None, :]  # (B, 1, 1, T)
        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, t, d)


class AttentionOutput(nn.Module):
    """Linear -> Dropout -> residual add -> LayerNorm."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class AttentionBlock(nn.Module):
    """One self-attention block, no feed-forward sub-layer (``self`` / ``output`` as released)."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.self = SelfAttentionCore(dim, n_heads, dropout)
        self.output = AttentionOutput(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


def attention_pool(scorer: nn.Linear, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention pooling: softmax over positions of ``scorer(x)`` (padded at -1e10), weighted sum.

    scorer: Linear(d, 1, no bias); x: (B, T, d); mask: (B, T) 1 = valid -> (B, d).
    """
    logits = scorer(x).squeeze(-1).masked_fill(mask == 0, MASK_VALUE)
    return torch.einsum("bt,btd->bd", torch.softmax(logits, dim=-1), x)
