"""Multi-head self-attention with the ``nn.MultiheadAttention`` parameter layout, batch-first.

Two storage layouts of the in-projection, numerically identical:

* packed (OpenAI / open_clip): ``in_proj_weight`` (3D, D) and ``in_proj_bias`` (3D,);
* split (CAT-Seg): ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` (D, D) each and the joint
  ``in_proj_bias`` (3D,), so q and v can train while k stays frozen.

Both keep ``out_proj`` (Linear D -> D). The split weights are concatenated before one matmul, so
both layouts give bit-identical outputs for the same values. :func:`split_in_proj` and
:func:`pack_in_proj` convert a state dict between the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_SPLIT_NAMES = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


class Attention(nn.Module):
    """Self-attention over (B, L, D) tokens via ``F.scaled_dot_product_attention``.

    Args:
        width: model width D (divisible by ``heads``).
        heads: number of heads.
        split_qkv: store q/k/v projection weights separately (CAT-Seg layout).
    """

    def __init__(self, width: int, heads: int, split_qkv: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by heads={heads}")
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.split_qkv = split_qkv
        if split_qkv:
            self.q_proj_weight = nn.Parameter(torch.empty(width, width))
            self.k_proj_weight = nn.Parameter(torch.empty(width, width))
            self.v_proj_weight = nn.Parameter(torch.empty(width, width))
        else:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``nn.MultiheadAttention`` does (xavier in-projection, zero biases)."""
        if self.split_qkv:
            # Same distribution as xavier on the packed (3D, D) matrix.
            bound = math.sqrt(6.0 / (4 * self.width))
            for name in _SPLIT_NAMES:
                nn.init.uniform_(getattr(self, name), -bound, bound)
        else:
            nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def packed_weight(self) -> torch.Tensor:
        """The (3D, D) in-projection weight, rows ordered q, k, v, in either layout."""
        if self.split_qkv:
            return torch.cat([self.q_proj_weight, self.k_proj_weight, self.v_proj_weight], dim=0)
        return self.in_proj_weight

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In-projection split into heads.

        Args:
            x: (B, L, D) tokens.

        Returns:
            q, k, v: each (B, heads, L, head_dim), unscaled.
        """
        b, n, _ = x.shape
        qkv = F.linear(x, self.packed_weight(), self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Attend all tokens to all tokens (or, with ``is_causal``, each token to itself and earlier ones).

        Args:
            x: (B, L, D) tokens.
            attn_mask: optional additive float mask broadcastable to (B, heads, L, L)
                (0 = attend, -inf = blocked); cast to ``x``'s dtype. Boolean masks are refused
                because their meaning differs between SDPA and ``nn.MultiheadAttention``.
            is_causal: causal attention without a materialised mask (same result as an additive
                mask with -inf above the diagonal); cannot be combined with ``attn_mask``.

        Returns:
            (B, L, D).
        """
        if is_causal and attn_mask is not None:
            raise ValueError("pass attn_mask or is_causal=True, not both; fold the causal part into the mask")
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                raise TypeError(
                    "Attention takes an additive float attn_mask (0 keeps, -inf blocks), got a bool mask; "
                    "convert it with torch.zeros_like(m, dtype=x.dtype).masked_fill(m, float('-inf'))"
                )
            attn_mask = attn_mask.to(x.dtype)
        q, k, v = self.project_qkv(x)
        return self.attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Scaled dot-product attention of projected heads, merged and passed through ``out_proj``.

        Always SDPA: the CPU's bf16 kernel is accurate (scores kept in float32, as far as its error
        shows), while the explicit-matmul form (:func:`matmul_attention`), faster on one thread,
        raised the tiny SAN's bf16 error from 0.012 to 0.046 (docs/performance.md, "Attention
        forms per shape").

        Args:
            q: (B, heads, Lq, head_dim); k, v: (B, heads, Lk, head_dim) (from :meth:`project_qkv`,
                possibly with keys of other tokens prepended, e.g. a cached prompt prefix).
            attn_mask: optional additive float mask broadcastable to (B, heads, Lq, Lk), in q's dtype.
            is_causal: causal attention without a materialised mask.

        Returns:
            (B, Lq, D).
        """
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal))

    def merge(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, head_dim) attention output -> (B, L, D) through ``out_proj``."""
        b, _, n, _ = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(b, n, self.width))


# Keys up to which :func:`prefers_matmul` holds (bench_attention: bf16 explicit matmuls are 1.1-1.7x
# faster per call than the fused CPU kernel up to ~650 keys in a quiet window; at 2260 keys the
# score matrix leaves the cache and the fused kernel wins).
MATMUL_MAX_KEYS = 1024


def prefers_matmul(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`matmul_attention` is the faster form for these heads (else SDPA).

    Only for reduced precision (bf16 / fp16) on the CPU, where the fused kernel runs no faster than
    in float32, and up to :data:`MATMUL_MAX_KEYS` keys; never while tracing or compiling. The form
    rounds the scores to bf16, so callers opt in where their outputs tolerate it (CAT-Seg's
    shifted windows); :class:`Attention` keeps SDPA.
    """
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.shape[-2] <= MATMUL_MAX_KEYS
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def short_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim) + attn_mask) v`` as explicit batched matmuls.

    Same result as ``F.scaled_dot_product_attention`` (up to rounding); for many very short
    sequences (a few queries, tens of keys) it is several times faster on the CPU than the fused
    kernel, whose per-block overhead dominates there.

    Args:
        q: (B, heads, Lq, head_dim); k, v: (B, heads, Lk, head_dim).
        attn_mask: additive float mask broadcastable to (B, heads, Lq, Lk); every query must keep a key.

    Returns:
        (B, heads, Lq, head_dim).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return (scores + attn_mask).softmax(dim=-1) @ v


def matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    float_scores: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim) + attn_mask) v`` with the whole score matrix at once.

    Args:
        q: (B, heads, Lq, head_dim); k, v: (B, heads, Lk, head_dim).
        attn_mask: optional additive float mask broadcastable to (B, heads, Lq, Lk).
        float_scores: for bf16/fp16 inputs, form the scores, the mask sum and the softmax in float32
            and only the weights times ``v`` in the input dtype (more accurate, but slower than SDPA
            on the CPU). By default the scores are rounded to the input dtype, which is where the
            speed comes from: a score of 16 moves by up to 1/16, its weight by ~6 %.

    Returns:
        (B, heads, Lq, head_dim), in q's dtype.
    """
    scale = q.shape[-1] ** -0.5
    low = q.dtype in (torch.bfloat16, torch.float16)
    if low and float_scores:
        scores = (q.float() * scale) @ k.float().transpose(-1, -2)
    else:
        scores = (q * scale) @ k.transpose(-1, -2)
    if attn_mask is not None:
        fits = torch.broadcast_shapes(scores.shape, attn_mask.shape) == scores.shape
        scores = scores.add_(attn_mask) if fits else scores + attn_mask  # in place when the shapes allow
    return scores.softmax(dim=-1).to(v.dtype) @ v


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    block: int = 128,
) -> torch.Tensor:
    """:func:`matmul_attention` in blocks of ``block`` queries (a block's scores stay in cache).

    Every query's row is computed exactly as in :func:`matmul_attention` (softmax over all keys at
    once), so the result does not depend on ``block``. The output is written into a (B, Lq, heads,
    head_dim) buffer, so :meth:`Attention.merge` reshapes it without a copy.

    Args:
        q: (B, heads, Lq, head_dim); k, v: (B, heads, Lk, head_dim).
        attn_mask: optional additive float mask broadcastable to (B, heads, Lq, Lk).
        block: queries per block (>= 1).

    Returns:
        (B, heads, Lq, head_dim), a transposed view of a contiguous (B, Lq, heads, head_dim) tensor.
    """
    b, h, n, d = q.shape
    q = q * d**-0.5
    kt = k.transpose(-1, -2)
    out = q.new_empty(b, n, h, v.shape[-1]).transpose(1, 2)
    for start in range(0, n, block):
        stop = min(start + block, n)
        scores = q[:, :, start:stop] @ kt
        if attn_mask is not None:
            scores = scores + (attn_mask[..., start:stop, :] if attn_mask.shape[-2] > 1 else attn_mask)
        out[:, :, start:stop] = scores.softmax(dim=-1) @ v
    return out


def split_in_proj(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed -> split layout: every ``*.in_proj_weight`` (3D, D) becomes ``*.{q,k,v}_proj_weight``.

    Pure: returns a new dict; other keys (including ``in_proj_bias``) are passed through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("in_proj_weight"):
            stem = key[: -len("in_proj_weight")]
            for name, part in zip(_SPLIT_NAMES, value.chunk(3, dim=0)):
                out[stem + name] = part
        else:
            out[key] = value
    return out


def pack_in_proj(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split -> packed layout: ``*.{q,k,v}_proj_weight`` are concatenated into ``*.in_proj_weight``.

    Pure: returns a new dict, keeping the order of the other keys. Raises ``KeyError`` naming the
    stem when one of the three parts is missing.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(_SPLIT_NAMES[0]):
            stem = key[: -len(_SPLIT_NAMES[0])]
            missing = [stem + n for n in _SPLIT_NAMES if stem + n not in state_dict]
            if missing:
                raise KeyError(f"cannot pack {stem}in_proj_weight: missing {missing}")
            out[stem + "in_proj_weight"] = torch.cat([state_dict[stem + n] for n in _SPLIT_NAMES], dim=0)
        elif key.endswith(_SPLIT_NAMES[1:]):
            continue
        else:
            out[key] = value
    return out
