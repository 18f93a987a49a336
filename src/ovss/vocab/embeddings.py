"""Text embeddings of a vocabulary, computed once and cached in memory and on disk.

The cache key of one prompt string is (weights id, template set, compute dtype, string): a repeated
vocabulary, or a new vocabulary sharing classes with an old one, costs nothing for the shared classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from ovss.utils import atomic_write
from ovss.vocab.templates import get_templates
from ovss.vocab.vocabulary import Vocabulary

Encoder = Callable[[torch.Tensor], torch.Tensor]  # tokens (P, K, L) -> (K, ...) normalised


def _string_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TextEmbedder:
    """Embed vocabularies with a model's ``encode_text``, caching per prompt string.

    Args:
        encode: the model's ``encode_text``: tokens (P, K, L) int64 -> (K, ...) float, normalised along
            the last axis.
        templates: template set name (``ovss.vocab.templates``).
        synonyms: synonym policy of the model: ``verbatim`` | ``first`` | ``mean``.
        cache_id: identifies the weights and compute dtype (e.g. ``"<sha256[:16]>-float32"``); None
            disables the disk cache.
        cache_dir: folder of the disk cache (one safetensors file per cache_id and template set).
        tokenize: tokenizer ``(list[str]) -> (N, 77) int64``; defaults to the CLIP BPE tokenizer.
        chunk: classes encoded per call (bounds memory: chunk x P prompts at once).
    """

    def __init__(
        self,
        encode: Encoder,
        templates: str,
        synonyms: str,
        cache_id: str | None = None,
        cache_dir: Path | None = None,
        tokenize: Callable[[list[str]], torch.Tensor] | None = None,
        chunk: int = 32,
    ) -> None:
        self.encode = encode
        self.templates = get_templates(templates)
        self.template_set = templates
        self.synonyms = synonyms
        self.chunk = chunk
        self._tokenize = tokenize
        self._memory: dict[str, torch.Tensor] = {}
        self._disk_path = (
            Path(cache_dir) / f"{cache_id}-{templates}.safetensors" if cache_id and cache_dir else None
        )
        self._disk_loaded = False
        self.computed = 0  # number of prompt strings actually encoded (for tests and logs)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self._tokenize is None:
            from ovss.towers.tokenizer import get_tokenizer

            self._tokenize = get_tokenizer()
        return self._tokenize(texts)

    @torch.no_grad()
    def __call__(self, vocabulary: Vocabulary) -> torch.Tensor:
        """Embeddings (K, ...) float32 on CPU, one row per class, normalised along the last axis."""
        per_class = vocabulary.prompts_for(self.synonyms)
        self._load_disk()
        missing = sorted({s for strings in per_class for s in strings if _string_key(s) not in self._memory})
        for start in range(0, len(missing), self.chunk):
            self._encode_strings(missing[start : start + self.chunk])
        if missing:
            self._save_disk()
        rows = []
        for strings in per_class:
            emb = torch.stack([self._memory[_string_key(s)] for s in strings]).mean(0)
            if len(strings) > 1:  # average of unit vectors: re-normalise (SED's synonym rule)
                emb = emb / emb.norm(dim=-1, keepdim=True)
            rows.append(emb)
        return torch.stack(rows)

    def _encode_strings(self, strings: list[str]) -> None:
        prompts = [t.format(s) for t in self.templates for s in strings]
        tokens = self.tokenize(prompts).view(len(self.templates), len(strings), -1)
        out = self.encode(tokens).float().cpu()
        for s, emb in zip(strings, out):
            self._memory[_string_key(s)] = emb.contiguous()
        self.computed += len(strings)

    def _load_disk(self) -> None:
        if self._disk_loaded or self._disk_path is None:
            return
        self._disk_loaded = True
        if self._disk_path.is_file():
            from safetensors.torch import load_file

            try:
                self._memory.update(load_file(str(self._disk_path)))
            except Exception:  # a corrupt cache is only a cache: recompute and overwrite it
                self._disk_path.unlink(missing_ok=True)

    def _save_disk(self) -> None:
        if self._disk_path is None:
            return
        from safetensors.torch import save_file

        tensors = dict(self._memory)
        atomic_write(self._disk_path, lambda p: save_file(tensors, str(p)))
