"""CLIP text tower (OpenAI / open_clip attribute names, batch-first, causal mask)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ovss.config import Config, check_positive_ints
from ovss.errors import ConfigError
from ovss.layers.attention import short_attention
from ovss.layers.mlp import ACTIVATIONS
from ovss.layers.transformer import Transformer
from ovss.utils import is_tracing

TEXT_BATCH = 256  # prompts per pass through the tower (sorted by length, each batch trimmed to its longest)
MIN_SHARED = 0.2  # share prefixes when that saves at least this fraction of the tokens


@dataclasses.dataclass(kw_only=True)
class TextConfig(Config):
    """Architecture of a CLIP text tower."""

    context_length: int = 77  # maximum number of tokens (rows of positional_embedding)
    vocab_size: int = 49408  # BPE vocabulary size (rows of token_embedding)
    width: int = 512  # token width
    heads: int = 8  # attention heads per block
    layers: int = 12  # number of residual attention blocks
    output_dim: int = 512  # joint embedding width E (columns of text_projection)
    mlp_ratio: float = 4.0  # MLP hidden width / width
    act: str = "quick_gelu"  # MLP activation: "quick_gelu" (OpenAI weights) or "gelu"
    ln_eps: float = 1e-5  # LayerNorm epsilon
    split_qkv: bool = False  # store q/k/v attention weights separately (CAT-Seg)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("context_length", "vocab_size", "width", "heads", "layers", "output_dim"))
        if self.width % self.heads:
            raise ConfigError(f"TextConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"TextConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"TextConfig.act={self.act!r} is not one of {list(ACTIVATIONS)}")
        if self.ln_eps <= 0:
            raise ConfigError(f"TextConfig.ln_eps must be > 0, got {self.ln_eps}")


def causal_mask(length: int, like: torch.Tensor) -> torch.Tensor:
    """(length, length) additive mask, -inf above the diagonal, in ``like``'s dtype and device."""
    mask = torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device)
    return mask.triu(1)


class TextTransformer(nn.Module):
    """Token + positional embedding, causal pre-LN blocks, ``ln_final``, EOT token ``@ text_projection``."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.context_length = cfg.context_length
        self.width = cfg.width
        self.output_dim = cfg.output_dim
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps, cfg.split_qkv
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token features after ``ln_final`` (before the projection), for the given length.

        Args:
            tokens: (N, L) int64 token ids, ``L <= context_length``.

        Returns:
            (N, L, width).
        """
        length = tokens.shape[1]
        self._check_length(length)
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, is_causal=True)  # = additive causal_mask(length, x), not materialised
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embedding at the EOT token (the largest id in each row), NOT normalised.

        Eager mode computes no token twice and no padding it can avoid, exactly (up to float
        rounding): under the causal mask a token's features depend only on the tokens up to it, so

        * prompts sharing a prefix (the template's words before the class name, in every class) run
          that prefix once (:func:`shared_prefix_lengths`); each prompt then runs only its own tail
          (class name, template end, EOT) attending to the cached keys/values of its prefix, and the
          last block runs its MLP for the EOT token only;
        * otherwise prompts are sorted by length and run in batches of ``TEXT_BATCH``, each trimmed
          to its own longest prompt (last EOT + 1).

        Batches keep the activations small (cache-resident) for vocabularies of thousands of
        prompts. Under tracing / export the full length runs in one batch.

        Args:
            tokens: (N, L) int64 token ids, ``L <= context_length``, zero-padded after EOT.

        Returns:
            (N, output_dim).
        """
        eot = tokens.argmax(dim=-1)  # (N,)
        if is_tracing() or tokens.shape[0] == 0:
            return self._embed(tokens, eot)
        self._check_length(int(eot.max()) + 1)
        split = shared_prefix_lengths(tokens, eot)
        prefixes, prefix_id = torch.unique(_masked_prefixes(tokens, split), dim=0, return_inverse=True)
        saved = int(split.sum()) - int((prefixes >= 0).sum())  # tokens not computed
        if saved >= MIN_SHARED * int(eot.sum() + eot.numel()):
            return self._embed_shared(tokens, eot, split, prefixes, prefix_id)
        return _in_batches(
            torch.argsort(eot, stable=True),
            lambda rows: self._embed(tokens[rows, : int(eot[rows].max()) + 1], eot[rows]),
        )

    def _check_length(self, length: int) -> None:
        if length > self.context_length:
            raise ValueError(
                f"token sequences have length {length} > context_length {self.context_length}; "
                f"tokenize with context_length={self.context_length}"
            )

    def _embed(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """(N, L) tokens and their EOT positions -> (N, output_dim) projected EOT features."""
        x = self.forward_tokens(tokens)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ self.text_projection.to(x.dtype)

    def _embed_shared(
        self,
        tokens: torch.Tensor,
        eot: torch.Tensor,
        split: torch.Tensor,
        prefixes: torch.Tensor,
        prefix_id: torch.Tensor,
    ) -> torch.Tensor:
        """EOT embeddings (N, output_dim) computing each shared prefix once.

        Args:
            tokens: (N, L) token ids; eot: (N,) EOT positions; split: (N,) prefix lengths, ``split <= eot``
                (row i's tokens ``[0, split_i)`` are its prefix, ``[split_i, eot_i]`` its tail).
            prefixes: (U, L) the distinct prefixes (-1 after each one's end); prefix_id: (N,) row -> prefix.
        """
        keys, values = self._prefix_kv(prefixes)  # per block: (U, heads, S, head_dim)
        tail = eot - split + 1  # (N,) tail lengths, >= 1 (the EOT token)

        def embed(rows: torch.Tensor) -> torch.Tensor:
            return self._embed_tail(tokens[rows], split[rows], tail[rows], prefix_id[rows], keys, values)

        return _in_batches(torch.argsort(tail, stable=True), embed)

    def _prefix_kv(self, prefixes: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of every block for (U, S) prefix rows (-1 after each prefix's end)."""
        length = max(int((prefixes >= 0).sum(1).max()), 1)
        x = self.token_embedding(prefixes[:, :length].clamp(min=0))
        x = x + self.positional_embedding[:length].to(x.dtype)
        keys, values = [], []
        blocks = self.transformer.blocks()
        for i, block in enumerate(blocks):
            q, k, v = block.attn.project_qkv(block.ln_1(x))
            keys.append(k)
            values.append(v)
            if i + 1 < len(blocks):  # the last block's output is never read
                x = x + block.attn.attend(q, k, v, is_causal=True)
                x = x + block.mlp(block.ln_2(x))
        return keys, values

    def _embed_tail(
        self,
        tokens: torch.Tensor,
        split: torch.Tensor,
        tail: torch.Tensor,
        prefix_id: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> torch.Tensor:
        """(B, output_dim) EOT embeddings of B prompts from their tails and their prefixes' keys/values."""
        b, device = tokens.shape[0], tokens.device
        length, prefix_len = int(tail.max()), int(split.max())
        pos = split[:, None] + torch.arange(length, device=device)  # (B, T) absolute positions
        pos = pos.clamp(max=min(tokens.shape[1], self.context_length) - 1)  # padding: any valid index
        x = self.token_embedding(tokens.gather(1, pos))
        x = x + self.positional_embedding[pos].to(x.dtype)
        # (B, 1, T, S + T): a tail token sees its prompt's prefix and the tail up to itself
        sees_prefix = torch.arange(prefix_len, device=device) < split[:, None]  # (B, S)
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = torch.cat(
            [sees_prefix[:, None, :].expand(b, length, prefix_len), causal.expand(b, length, length)], dim=2
        )
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=device).masked_fill_(~allowed, float("-inf"))
        mask = mask[:, None]
        rows, last = torch.arange(b, device=device), tail - 1
        blocks = self.transformer.blocks()
        for i, block in enumerate(blocks):
            q, k, v = block.attn.project_qkv(block.ln_1(x))
            k = torch.cat([keys[i][prefix_id, :, :prefix_len], k], dim=2)
            v = torch.cat([values[i][prefix_id, :, :prefix_len], v], dim=2)
            if i + 1 == len(blocks):  # only the EOT token's output is read
                q, mask, x = q[rows, :, last, None], mask[rows, :, last, None], x[rows, last, None]
            x = x + block.attn.merge(short_attention(q, k, v, mask))
            x = x + block.mlp(block.ln_2(x))
        return self.ln_final(x[:, -1]) @ self.text_projection.to(x.dtype)


def _in_batches(order: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``embed`` on batches of ``TEXT_BATCH`` row indices taken in ``order`` (similar rows together).

    Args:
        order: (N,) a permutation of the rows; embed: (n,) row indices -> (n, E) embeddings.

    Returns:
        (N, E), rows in input order.
    """
    out: torch.Tensor | None = None
    for start in range(0, len(order), TEXT_BATCH):
        rows = order[start : start + TEXT_BATCH]
        emb = embed(rows)
        if out is None:
            out = emb.new_empty(len(order), emb.shape[1])
        out[rows] = emb
    assert out is not None  # callers pass at least one row
    return out


def shared_prefix_lengths(tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """For each row, the length of the longest prefix it shares with another row, at most its EOT position.

    Rows are sorted lexicographically, so a row's longest shared prefix is the one it shares with a
    neighbour. A prompt's EOT token always stays in its own tail.

    Args:
        tokens: (N, L) int64 token ids; eot: (N,) EOT positions.

    Returns:
        (N,) int64 in ``[0, eot]``.
    """
    n = tokens.shape[0]
    lcp = torch.zeros(n, dtype=torch.long, device=tokens.device)
    if n < 2:
        return lcp
    order = torch.arange(n, device=tokens.device)
    for col in reversed(range(tokens.shape[1])):  # stable sorts, last key first: lexicographic order
        order = order[torch.argsort(tokens[order, col], stable=True)]
    ranked = tokens[order]
    common = (ranked[1:] == ranked[:-1]).long().cumprod(dim=1).sum(dim=1)  # (N-1,) LCP of neighbours
    lcp[order[1:]] = common
    lcp[order[:-1]] = torch.maximum(lcp[order[:-1]], common)
    return torch.minimum(lcp, eot)


def _masked_prefixes(tokens: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """(N, L) tokens with -1 from each row's ``split`` on (rows with equal prefixes become equal)."""
    beyond = torch.arange(tokens.shape[1], device=tokens.device) >= split[:, None]
    return tokens.masked_fill(beyond, -1)
