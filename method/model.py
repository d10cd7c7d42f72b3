"""The DL-DKD student: two branches of the same shape (inheritance, exploration).

Shapes: V videos, Q queries, L padded frames, N padded tokens, d hidden size.
Parameter names below a branch equal the released ones without their
``B_`` (inheritance) / ``A_`` (exploration) prefix, so released checkpoints map
by prefix (see ``method.checkpoint``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -1e10  # masked frames / tokens before max and softmax, as released
BRANCHES = ("inheritance", "exploration")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; stored in every checkpoint."""

    visual_input_size: int
    query_input_size: int
    hidden_size: int = 384
    n_heads: int = 4
    max_ctx_l: int = 128
    max_desc_l: int = 30
    input_drop: float = 0.1
    drop: float = 0.1
    share_query_proj: bool = True  # released quirk: exploration uses the inheritance query projection
    single_branch: bool = False  # ablation: inheritance branch only

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class LinearLayer(nn.Module):
    """LayerNorm(in) -> Dropout -> Linear(in, out) -> ReLU; names as released (``net.1``)."""

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


class Branch(nn.Module):
    """One student branch: a query encoder and a frame encoder in a shared space."""

    def __init__(self, cfg: ModelConfig, with_query_proj: bool = True):
        super().__init__()
        d = cfg.hidden_size
        if with_query_proj:
            self.query_input_proj = LinearLayer(cfg.query_input_size, d, cfg.input_drop)
        self.query_pos_embed = PositionalEncoding(cfg.max_desc_l, d, cfg.input_drop)
        self.query_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)
        self.frame_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.frame_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        self.frame_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.mapping_linear = nn.Linear(d, d)

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: nn.Module | None = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> one vector per query (Q, d).

        ``input_proj`` replaces this branch's own query projection (released sharing).
        """
        x = (input_proj or self.query_input_proj)(feat)
        x = self.query_encoder(self.query_pos_embed(x), mask)
        logits = self.modular_vector_mapping(x).squeeze(-1).masked_fill(mask == 0, MASK_VALUE)
        weights = torch.softmax(logits, dim=-1)  # (Q, N)
        return torch.einsum("qn,qnd->qd", weights, x)

    def encode_video(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feat: (V, L, Dv), mask: (V, L) -> per-frame features (V, L, d)."""
        x = self.frame_encoder(self.frame_pos_embed(self.frame_input_proj(feat)), mask)
        return self.mapping_linear(x)


@dataclass
class ScoreOutput:
    """Scores of one branch for Q queries against V videos of L frames."""

    video_scores: torch.Tensor  # (Q, V) max over valid frames of the cosine
    video_scores_raw: torch.Tensor  # (Q, V) max over valid frames of the dot product
    frame_scores: torch.Tensor | None  # (Q, V, L) cosine, padded frames = MASK_VALUE (None: video level only)

    def float(self) -> "ScoreOutput":
        """float32 copies (after a bf16 autocast forward), so the losses run in float32."""
        frames = None if self.frame_scores is None else self.frame_scores.float()
        return ScoreOutput(self.video_scores.float(), self.video_scores_raw.float(), frames)


def frame_dot(query: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """query: (Q, d), frames: (V, L, d) -> dot products (Q, V, L), one matmul."""
    v, l, d = frames.shape
    return (query @ frames.reshape(v * l, d).t()).view(query.shape[0], v, l)


def score_branch(query: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> ScoreOutput:
    """Cosine and dot-product scores of queries (Q, d) against frames (V, L, d), frame_mask (V, L).

    Two matmuls, as released: unit vectors for the cosine, raw vectors for the
    NCE scores; padded frames are masked in place on the fresh matmul outputs.
    """
    pad = (frame_mask == 0)[None]  # (1, V, L)
    cos = frame_dot(F.normalize(query, dim=-1, eps=1e-12), F.normalize(frames, dim=-1, eps=1e-12))
    raw = frame_dot(query, frames)
    cos = cos.masked_fill_(pad, MASK_VALUE)
    raw = raw.masked_fill_(pad, MASK_VALUE)
    return ScoreOutput(cos.amax(dim=-1), raw.amax(dim=-1), cos)


def normalize_frames(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Unit-length frames (V, L, d) for inference, padded frames replaced by the video's first frame.

    A repeated valid frame never changes a max over frames, so scoring needs no mask.
    """
    unit = F.normalize(frames, dim=-1, eps=1e-12)
    return torch.where(frame_mask[..., None] > 0, unit, unit[:, :1])


def cosine_video_scores(query: torch.Tensor, frames_unit: torch.Tensor) -> torch.Tensor:
    """Inference: queries (Q, d) vs ``normalize_frames`` output (V, L, d) -> max cosine over frames (Q, V)."""
    return frame_dot(F.normalize(query, dim=-1, eps=1e-12), frames_unit).amax(dim=-1)


class DLDKD(nn.Module):
    """Two-branch student. Returns embeddings; scores are ``score_branch``, losses live in ``method.losses``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inheritance = Branch(cfg)
        if not cfg.single_branch:
            self.exploration = Branch(cfg, with_query_proj=not cfg.share_query_proj)
        self.apply(self._init_weights)

    @property
    def branch_names(self) -> tuple[str, ...]:
        return BRANCHES[:1] if self.cfg.single_branch else BRANCHES

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode_queries(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """feat: (Q, N, Dq), mask: (Q, N) -> {branch: (Q, d)}."""
        out = {"inheritance": self.inheritance.encode_query(feat, mask)}
        if not self.cfg.single_branch:
            shared = self.inheritance.query_input_proj if self.cfg.share_query_proj else None
            out["exploration"] = self.exploration.encode_query(feat, mask, shared)
        return out

    def encode_videos(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """feat: (V, L, Dv), mask: (V, L) -> {branch: (V, L, d)}."""
        return {name: getattr(self, name).encode_video(feat, mask) for name in self.branch_names}

    def forward(self, video_feat: torch.Tensor, video_mask: torch.Tensor,
                query_feat: torch.Tensor, query_mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Training embeddings of a batch: {"queries": {branch: (Q, d)}, "frames": {branch: (V, L, d)}}.

        Scoring happens outside the module (``method.global_batch``), so that the
        processes of a distributed run can score every query against every video
        of the global batch.
        """
        return {"queries": self.encode_queries(query_feat, query_mask),
                "frames": self.encode_videos(video_feat, video_mask)}

    def score(self, video_feat: torch.Tensor, video_mask: torch.Tensor,
              query_feat: torch.Tensor, query_mask: torch.Tensor) -> dict[str, ScoreOutput]:
        """Scores of every query against every video of one batch, per branch (one process)."""
        emb = self(video_feat, video_mask, query_feat, query_mask)
        return {name: score_branch(emb["queries"][name], emb["frames"][name], video_mask) for name in self.branch_names}

    def fuse(self, scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
        """Fused inference score, e.g. 0.3 * exploration + 0.7 * inheritance (single branch: inheritance)."""
        if self.cfg.single_branch:
            return scores["inheritance"]
        return weights["exploration"] * scores["exploration"] + weights["inheritance"] * scores["inheritance"]
