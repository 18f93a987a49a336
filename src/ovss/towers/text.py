"""CLIP text tower (OpenAI / open_clip attribute names, batch-first, causal mask)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ovss.config import Config
from ovss.errors import ConfigError
from ovss.layers.mlp import ACTIVATIONS
from ovss.layers.transformer import Transformer
from ovss.utils import is_tracing

TEXT_BATCH = 256  # prompts per pass through the tower (sorted by length, each batch trimmed to its longest)


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
        for name in ("context_length", "vocab_size", "width", "heads", "layers", "output_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"TextConfig.{name} must be a positive integer, got {value!r}")
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
        if length > self.context_length:
            raise ValueError(
                f"token sequences have length {length} > context_length {self.context_length}; "
                f"tokenize with context_length={self.context_length}"
            )
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, is_causal=True)  # = additive causal_mask(length, x), not materialised
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embedding at the EOT token (the largest id in each row), NOT normalised.

        In eager mode the prompts are sorted by length and run in batches of ``TEXT_BATCH``, each
        trimmed to its own longest prompt (last EOT + 1): the causal mask makes every trimmed token
        exact, and a vocabulary of mixed lengths computes no padding beyond each batch's longest.
        Batches also keep the activations small (cache-resident) for vocabularies of thousands of
        prompts. Under tracing / export the full length runs in one batch.

        Args:
            tokens: (N, L) int64 token ids, ``L <= context_length``, zero-padded after EOT.

        Returns:
            (N, output_dim).
        """
        eot = tokens.argmax(dim=-1)  # (N,)
        if is_tracing() or tokens.shape[0] == 0:
            return self._embed(tokens, eot)
        order = torch.argsort(eot, stable=True)
        lengths = eot[order].tolist()
        out = None
        for start in range(0, len(lengths), TEXT_BATCH):
            rows = order[start : start + TEXT_BATCH]
            longest = lengths[min(start + TEXT_BATCH, len(lengths)) - 1]  # sorted: the batch's last
            emb = self._embed(tokens[rows, : longest + 1], eot[rows])
            if out is None:
                out = emb.new_empty(tokens.shape[0], emb.shape[1])
            out[rows] = emb
        return out

    def _embed(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """(N, L) tokens and their EOT positions -> (N, output_dim) projected EOT features."""
        x = self.forward_tokens(tokens)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ self.text_projection.to(x.dtype)
