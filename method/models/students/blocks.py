"""Building blocks shared by the students, named as in the authors' state dicts.

Shapes: B sequences of T positions, d hidden size, H heads.
"""
from __future__ import annotations

import math

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


# --------------------------------------------------------------------------- #
# GMMFormer family (docs/gmmformer.md: "Shared blocks", "The GMMFormer network", "The GMMFormerV2 network")
# --------------------------------------------------------------------------- #
GMM_WIDTHS = (None, 0.5, 1.0, 5.0)  # GMMFormer's GMM block: attn0..attn3 (None = no Gaussian)
DYGMM_WIDTHS = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)  # GMMFormerV2's DyGMM block: attn0..attn7


def gaussian_matrix(length: int, width: float, centred: bool = False, own_lengths: torch.Tensor | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """The Gaussian prior G(L, w) of the attention logits, float32 as the authors compute it.

    Row i is ``exp(-(x_j - c_i)^2 / (2 sigma^2))`` over the key grid
    ``x_j = j / (L - 1)`` (``linspace(0, 1, L)``), ``sigma = max(w, 0.01) / 9``,
    divided by its own maximum. Centres ``c_i = i / L`` as released (quirk Q2),
    or ``c_i = x_i`` with ``centred`` (a diagonal prior). Rows whose every
    entry underflows are NaN (0/0), as released (w = 0.1, L in 2..4).

    Returns (L, L); with ``own_lengths`` (V,) (quirk Q1 fix) a (V, L, L)
    stack where video v's top-left (n_v, n_v) block is G(n_v, w) and the
    entries beyond n_v are 0. Placed on ``own_lengths``' device, else ``device``.
    """
    if own_lengths is not None:
        device = own_lengths.device
    idx = torch.arange(length, device=device)
    if own_lengths is None:
        n = torch.full((1, 1), float(length), device=device)
        grid = torch.linspace(0, 1, length, device=device)[None]  # (1, L)
    else:
        n = own_lengths.to(torch.float32)[:, None]  # (V, 1)
        grid = idx / (n - 1).clamp(min=1)  # (V, L); x_0 = 0 when n = 1
    centres = grid if centred else idx / n  # (·, L)
    sigma = torch.tensor(width, dtype=torch.float32, device=device).clamp(min=1e-2) / 9
    diff = grid[:, None, :] - centres[:, :, None]  # (·, L rows, L keys)
    g = 0.3989422804014327 / sigma * torch.exp(-diff ** 2 / (2 * sigma ** 2))  # the constant cancels; kept for rounding
    if own_lengths is None:
        return (g / g.amax(dim=-1, keepdim=True))[0]
    inside = idx[None, :] < own_lengths[:, None]  # (V, L)
    g = g * inside[:, None, :]  # keys beyond n_v leave the row maximum
    valid = inside[:, :, None] & inside[:, None, :]
    return torch.where(valid, g / g.amax(dim=-1, keepdim=True), torch.zeros_like(g))


class GaussianSelfAttention(nn.Module):
    """Multi-head attention whose logits are multiplied by G(L_k, width) before the -10000 padding term (2.4).

    Written out (no ``scaled_dot_product_attention``, which cannot multiply the
    logits); vectorised over items and heads. ``width=None``: plain attention.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, width: float | None = None, centred: bool = False):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.width = width
        self.centred = centred
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d) queries; memory: (B, S, d) keys/values (default x); mask: (B, S) 1 = valid or None;
        own_lengths: (B,) per-item Gaussian lengths (quirk Q1 fix) or None -> (B, T, d).

        ``gauss_length`` (>= S): the sequence is the first S positions of one of
        that length whose other positions are all masked; G is that length's,
        cut to (T, S). Masked keys weigh exactly 0, so this equals attending
        over the whole padded length.
        """
        memory = x if memory is None else memory
        b, t, d = x.shape
        dh = d // self.n_heads

        def heads(h: torch.Tensor) -> torch.Tensor:  # (B, ·, d) -> (B, H, ·, d/H); B may be 0 (an empty share)
            return h.view(b, h.shape[1], self.n_heads, dh).transpose(1, 2)

        logits = heads(self.query(x)) @ heads(self.key(memory)).transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, S)
        if self.width is not None:
            length = memory.shape[1] if gauss_length is None else gauss_length
            gauss = gaussian_matrix(length, self.width, self.centred, own_lengths, device=x.device)
            gauss = gauss[..., :t, :memory.shape[1]]
            logits = logits * (gauss if own_lengths is None else gauss[:, None])
        if mask is not None:
            logits = logits + ((1.0 - mask) * -10000.0).to(logits.dtype)[:, None, None, :]
        probs = self.dropout(torch.softmax(logits, dim=-1))
        return (probs @ heads(self.value(memory))).transpose(1, 2).reshape(b, t, d)


class GMMAttentionLayer(nn.Module):
    """GMMFormer attention layer (3.1): ``LN(X + Dropout(Linear(SA(X))))``, no feed-forward (``self`` / ``output``)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, width: float | None = None, centred: bool = False):
        super().__init__()
        self.self = GaussianSelfAttention(dim, n_heads, dropout, width, centred)
        self.output = AttentionOutput(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) or None, own_lengths: (B,) or None -> (B, T, d)."""
        return self.output(self.self(x, mask, own_lengths=own_lengths), x)


class FeedForward(nn.Module):
    """``layer2(Dropout(ReLU(layer1(x))))`` (names ``layer1`` / ``layer2`` as released)."""

    def __init__(self, dim: int, inner: int, dropout: float):
        super().__init__()
        self.layer1 = nn.Linear(dim, inner)
        self.layer2 = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.dropout(F.relu(self.layer1(x))))


class FFNAttentionLayer(nn.Module):
    """GMMFormerV2 attention layer (4.1; with ``memory``, the cross-attention layer 4.2).

    ``Y = norm1(X + Dropout(SA(X, memory)))``, ``out = norm2(Y + Dropout(FFN(Y)))``,
    FFN of inner size ``inner`` (4d in 4.1, d in 4.2); no output Linear.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, inner: int, width: float | None = None,
                 centred: bool = False):
        super().__init__()
        self.self = GaussianSelfAttention(dim, n_heads, dropout, width, centred)
        self.output = FeedForward(dim, inner, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, S) key mask or None, memory: (B, S, d) or None (= x) -> (B, T, d).

        ``gauss_length``: see ``GaussianSelfAttention.forward``.
        """
        y = self.norm1(x + self.dropout(self.self(x, mask, memory, gauss_length=gauss_length)))
        return self.norm2(y + self.dropout(self.output(y)))


class GMMBlock(nn.Module):
    """GMMFormer's GMM block (3.2): four attention layers with widths ``GMM_WIDTHS`` on the same input, averaged."""

    def __init__(self, dim: int, n_heads: int, dropout: float, centred: bool = False):
        super().__init__()
        for k, width in enumerate(GMM_WIDTHS):
            self.add_module(f"attn{k}", GMMAttentionLayer(dim, n_heads, dropout, width, centred))

    def branches(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                 own_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) or None, own_lengths: (B,) or None -> (4, B, T, d), attn0..attn3."""
        return torch.stack([getattr(self, f"attn{k}")(x, mask, own_lengths) for k in range(len(GMM_WIDTHS))])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, T, d), the plain mean of the branches (only the branch axis is reduced: quirk Q6 fixed)."""
        return self.branches(x, mask, own_lengths).mean(dim=0)


class DyGMMBlock(nn.Module):
    """GMMFormerV2's DyGMM block (4.3): eight attention layers fused per absolute position.

    A shared cross-attention ``ca`` reads each branch with the token t; the
    head ``layer2(Dropout(ReLU(layer1(.))))`` gives ``frame_len`` logits per
    branch; a softmax over the branches (temperature ``tau``) weights them at
    every position. The input is ``frame_len`` positions long (quirk Q4), or
    its first L positions when all the others are masked (padding): those
    take no part in anything the first L produce, so they are not computed.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, frame_len: int, tau: float, centred: bool = False):
        super().__init__()
        for k, width in enumerate(DYGMM_WIDTHS):
            self.add_module(f"attn{k}", FFNAttentionLayer(dim, n_heads, dropout, 4 * dim, width, centred))
        self.ca = FFNAttentionLayer(dim, n_heads, dropout, dim)
        self.layer1 = nn.Linear(dim, dim)
        self.layer2 = nn.Linear(dim, frame_len)
        self.dropout = nn.Dropout(dropout)
        self.frame_len = frame_len
        self.tau = tau

    def branches(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d), mask: (B, L) or None -> (8, B, L, d), attn0..attn7.

        L < frame_len needs a mask: the positions L..frame_len-1 are taken as masked.
        """
        length = x.shape[1]
        if length > self.frame_len or (length < self.frame_len and mask is None):
            raise ValueError(f"DyGMM block of frame_len {self.frame_len} got length {length}"
                             + ("" if length > self.frame_len else " without a mask"))
        return torch.stack([getattr(self, f"attn{k}")(x, mask, gauss_length=self.frame_len)
                            for k in range(len(DYGMM_WIDTHS))])

    def branch_tokens(self, outs: torch.Tensor, token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """outs: (K, B, L, d) branches, token: (1, 1, d), mask: (B, L) or None -> (B, K, d), one ``ca`` call."""
        k, b, length, d = outs.shape
        memory = outs.reshape(k * b, length, d)
        keys = None if mask is None else mask.repeat(k, 1)
        tokens = self.ca(token.expand(k * b, 1, d), keys, memory)  # (K B, 1, d), branch-major
        return tokens.view(k, b, d).transpose(0, 1)

    def fusion_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, K, d) -> Z (B, K, frame_len), before the temperature."""
        return self.layer2(self.dropout(F.relu(self.layer1(tokens))))

    def forward(self, x: torch.Tensor, token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L <= frame_len, d), token: (1, 1, d), mask: (B, L) or None -> (B, L, d)."""
        outs = self.branches(x, mask)
        logits = self.fusion_logits(self.branch_tokens(outs, token, mask))[..., :x.shape[1]]
        weights = torch.softmax(logits / self.tau, dim=1)
        return torch.einsum("bkl,kbld->bld", weights, outs)
