"""SED's gradual fusion decoder with category early rejection (CER).

Layout used throughout: classes are folded into the batch axis, ``(B*K, C, H, W)`` with the image
index outer (row ``b*K + k``), which is what the official ``'(B T)'`` rearranges produce. Per-class maps
are kept channels-last in memory, so the ConvNeXt blocks' LayerNorm/MLP and the class attention read
them without permute copies.

Pipeline (sizes for a 768x768 input, h = w = 24):

```
cost      cos(dense (B,E,h,w), text (K,P,E))                  (B*K, P, h, w)
embed     Conv2d(P -> hidden, 7x7)                             (B*K, hidden, h, w)     -> CER head 0
stage i   ConvNeXt block (dw kxk) -> linear attention over classes -> ConvT 2x2 s2 (C -> C-g)
          ++ image guidance (g ch, shared by the classes) ++ cost guidance (g ch, per class)
          -> DoubleConv(C+g -> d_i)                            (B*K, d_i, 2^i h, 2^i w) -> CER head i
head      Conv2d(d_3 -> 1, 3x3)                                logits (B, K, 8h, 8w)
```

How the decoder computes this (exactly the same function, less work; :meth:`FusionStage.forward`
keeps the literal official form as the reference):

* **Up-conv and first fusion conv are one operator.** ``conv3x3(ConvT2x2s2(x))`` is linear in ``x``,
  so it is one ``ConvTranspose2d(C -> d, 4x4, stride 2, padding 1)`` with the composed kernel; the
  up-conv bias becomes a class-independent map. The image-guidance part of the concatenation is the
  same for every class: its conv runs once per image and is broadcast. Per class and stage this
  halves the fusion FLOPs (e.g. stage 1: 105k -> 51k multiply-adds per output pixel).
* **Classes in chunks, pixels in chunks.** Everything but the class attention is per class, so it runs
  on cache-sized chunks of classes (cost map, embedding, ConvNeXt block, fusion, heads: no (B*K, 4C,
  H, W) temporary ever exists); the class attention is per pixel and runs on chunks of pixels with all
  classes, in place. Only the stage inputs are held for all classes. The per-class cost-guidance
  chain (ConvT+ReLU, ~1 % of the FLOPs) is recomputed per chunk rather than stored at every stage.
  Training, tracing (ONNX) and recording use the same operators on whole tensors.
* The CER heads run only where needed (training outputs, fast mode).

Fast inference (CER) keeps, before every stage, only the classes that are in the top-k of the
previous CER head at some pixel, and runs the rest of the decoder on those classes only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import cast, overload

import torch
import torch.nn.functional as F
from torch import nn

from ovss.models.sed_blocks import FusionStage
from ovss.utils import is_tracing

CL = torch.channels_last


def cer_survivors(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """Category early rejection: classes in the top-k of at least one pixel.

    Args:
        logits: (1, K, H, W) CER head output of one image.
        topk: classes kept per pixel (clamped to K).

    Returns:
        (K',) int64 indices into the K classes, ascending.
    """
    num_classes = logits.shape[1]
    top = logits.topk(min(topk, num_classes), dim=1).indices  # (1, k, H, W)
    hit = torch.zeros(num_classes, dtype=torch.bool, device=logits.device)
    hit[top.reshape(-1)] = True
    return hit.nonzero().squeeze(1)


class SEDDecoder(nn.Module):
    """Cost map, gradual fusion decoder and CER heads.

    Args:
        num_templates: P, prompt templates per class (cost channels; 80 ImageNet templates).
        hidden_dim: cost-embedding channels (128).
        decoder_dims: output channels of the 3 stages ((64, 32, 16)).
        guidance_dims: channels of the image skips in stage order (res4, res3, res2).
        guidance_proj_dims: channels g of the projected image and cost guidance per stage ((32, 16, 8)).
        kernel_sizes: ConvNeXt depthwise kernel per stage ((9, 9, 9)).
        heads: class-attention heads (4).
        pool_train, pool_test: class-attention pooling in training / eval ((2, 2) / (1, 1)).
        chunk_bytes: inference without autograd runs the per-class work in chunks of classes and the
            class attention in chunks of pixels, each with about this many bytes in its largest
            temporary; 0 = whole tensors (what training, tracing and recording use). The default,
            16 MiB, stays under glibc's 32 MiB ``mmap`` threshold, so these temporaries reuse freed
            heap memory instead of faulting in fresh zeroed pages on every chunk.
    """

    def __init__(
        self,
        *,
        num_templates: int,
        hidden_dim: int,
        decoder_dims: Sequence[int],
        guidance_dims: Sequence[int],
        guidance_proj_dims: Sequence[int],
        kernel_sizes: Sequence[int],
        heads: int,
        pool_train: tuple[int, int],
        pool_test: tuple[int, int],
        chunk_bytes: int = 1 << 24,
    ) -> None:
        super().__init__()
        stage_in = (hidden_dim, *decoder_dims[:-1])
        cost_in = (num_templates, *guidance_proj_dims[:-1])
        self.cost_embed = nn.Conv2d(num_templates, hidden_dim, kernel_size=7, padding=3)
        self.image_guidance = nn.ModuleList(
            nn.Conv2d(d, g, kernel_size=3, padding=1) for d, g in zip(guidance_dims, guidance_proj_dims)
        )
        self.cost_guidance = nn.ModuleList(
            nn.ConvTranspose2d(c, g, kernel_size=2, stride=2) for c, g in zip(cost_in, guidance_proj_dims)
        )
        self.stages = nn.ModuleList(
            FusionStage(c, d, g, k, heads, pool_train, pool_test)
            for c, d, g, k in zip(stage_in, decoder_dims, guidance_proj_dims, kernel_sizes)
        )
        self.cer_heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=3, padding=1) for c in stage_in)
        self.head = nn.Conv2d(decoder_dims[-1], 1, kernel_size=3, padding=1)
        self.chunk_bytes = chunk_bytes
        self._widths = (*stage_in, decoder_dims[-1])  # channels of the input of stage 0..2 and of head
        self._record: dict[str, torch.Tensor] | None = None

    @staticmethod
    def cost_volume(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every pixel with every class and template (no temperature).

        Args:
            dense: (B, E, h, w) dense CLIP image embedding.
            text: (K, P, E) text embeddings.

        Returns:
            (B*K, P, h, w), image index outer.
        """
        h, w = dense.shape[-2:]
        img = F.normalize(dense, dim=1).flatten(2)
        txt = F.normalize(text, dim=-1)
        return (txt.flatten(0, 1) @ img).view(-1, text.shape[1], h, w)

    def image_guides(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Conv3x3 + ReLU projections of the skips (res4, res3, res2): [(B, g_i, ...)] per stage."""
        return [F.relu(proj(s)) for proj, s in zip(self.image_guidance, skips)]

    def image_terms(
        self, skips: Sequence[torch.Tensor], weights: Sequence[Sequence[torch.Tensor]] | None = None
    ) -> list[torch.Tensor]:
        """Everything the decoder takes from the image skips: each stage's class-independent part of
        its first fusion conv (:meth:`FusionStage.image_term` of :meth:`image_guides`), (B, d_i, ...).
        A re-query computes them once per image (``SED.image_stage``)."""
        guides = self.image_guides(skips)
        for i, g in enumerate(guides):
            self._keep(f"image_guide{i}", g)
        stages = self.fusion_stages()
        weights = weights if weights is not None else [stage.split_weights() for stage in stages]
        return [stage.image_term(g, wt) for stage, g, wt in zip(stages, guides, weights)]

    def cost_guides(self, cost: torch.Tensor, level: int) -> torch.Tensor:
        """Cost guidance of stage ``level``: the chained ConvT 2x2 s2 + ReLU on the cost, level + 1 times."""
        for proj in self.cost_guidance[: level + 1]:
            cost = F.relu(proj(cost), inplace=True)
        return cost

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        """Keep the intermediates of the next forward passes (whole tensors, for parity checks).

        Keys: ``embed``, ``image_guide{i}``, ``cost_guide{i}``, ``cer{i}`` (CER head logits, fast mode and
        training), ``stage{i}.spatial``, ``stage{i}.class_attn``, ``stage{i}.up`` (the up-conv output,
        computed for the record only), ``stage{i}.fuse`` (stage output), ``head`` (final logits).
        """
        self._record = {}
        try:
            yield self._record
        finally:
            self._record = None

    def fusion_stages(self) -> list[FusionStage]:
        """``stages`` as a list of their type."""
        return cast("list[FusionStage]", list(self.stages))

    @overload
    def _keep(self, name: str, value: torch.Tensor) -> torch.Tensor: ...
    @overload
    def _keep(self, name: str, value: Callable[[], torch.Tensor]) -> torch.Tensor | None: ...
    def _keep(self, name: str, value: Callable[[], torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
        """Record ``value`` (a tensor, or a function computing it) while :meth:`recording`; returns it."""
        if self._record is not None:
            value = value() if callable(value) else value
            self._record[name] = value.detach()
        return None if callable(value) else value

    def forward(
        self,
        dense: torch.Tensor,
        text: torch.Tensor,
        skips: Sequence[torch.Tensor],
        aux: bool = True,
        terms: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full decoder on all classes (training and normal inference).

        Args:
            dense: (B, E, h, w) dense CLIP embedding (stride 32).
            text: (K, P, E) text embeddings.
            skips: image features in stage order: res4 (B, ., 2h, 2w), res3 (4h), res2 (8h).
            aux: also compute the CER heads (training targets); inference passes False.
            terms: :meth:`image_terms` of ``skips``, when already computed (``skips`` is then unused).

        Returns:
            logits (B, K, 8h, 8w) before sigmoid, and the three CER head logits
            [(B, K, h, w), (B, K, 2h, 2w), (B, K, 4h, 4w)] computed on detached features ([] if not aux).
        """
        logits, heads, _ = self._decode(dense, text, skips, aux, None, terms)
        return logits, heads

    @torch.no_grad()
    def forward_fast(
        self,
        dense: torch.Tensor,
        text: torch.Tensor,
        skips: Sequence[torch.Tensor],
        topk: int,
        terms: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """CER inference for one image: rejected classes are dropped from all further computation.

        Before every stage the CER head of the current features picks the classes that are in the
        top-``topk`` of at least one pixel; only those go on (class attention then spans only them).
        Official output convention (SED ``model.py`` fast_conv_decoder): probabilities, with
        sigmoid(logits) at the final surviving classes and exactly 0 elsewhere.

        Args:
            dense: (1, E, h, w).
            text: (K, P, E).
            skips: as in :meth:`forward`, batch 1.
            topk: classes kept per pixel at each stage.
            terms: :meth:`image_terms` of ``skips``, when already computed.

        Returns:
            probabilities (1, K, 8h, 8w) and the surviving class indices entering each stage,
            [(K1,), (K2,), (K3,)] int64, absolute (into the K classes), ascending.
        """
        logits, _, survivors = self._decode(dense, text, skips, False, topk, terms)
        probs = dense.new_zeros(1, text.shape[0], *logits.shape[-2:])
        probs[0, survivors[-1]] = logits[0].sigmoid()
        return probs, survivors

    def _decode(
        self,
        dense: torch.Tensor,
        text: torch.Tensor,
        skips: Sequence[torch.Tensor],
        aux: bool,
        topk: int | None,
        terms: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Logits (B, K', 8h, 8w) of the K' final classes, CER head logits (if ``aux``), survivors (fast)."""
        batch, size = dense.shape[0], tuple(dense.shape[-2:])
        chunked = self.chunk_bytes > 0 and not (
            torch.is_grad_enabled() or is_tracing() or self._record is not None
        )
        cost = self.cost_volume(dense, text).contiguous(memory_format=CL)  # (B*K, P, h, w)
        stages = self.fusion_stages()
        weights = [stage.split_weights() for stage in stages]
        terms = terms if terms is not None else self.image_terms(skips, weights)
        keep = torch.arange(text.shape[0], device=dense.device)
        survivors: list[torch.Tensor] = []
        heads: list[torch.Tensor] = []
        x = cost  # the previous stage's class-attention output (i >= 1)

        def produce(i: int, rows: slice, b: slice) -> torch.Tensor:
            """Input of stage i (its ConvNeXt block's; i = 3: the head's) for the given rows of images b."""
            if i == 0:
                return self._keep("embed", self.cost_embed(cost[rows]))
            stage, prev = stages[i - 1], x[rows]
            cost_guide = self._keep(f"cost_guide{i - 1}", self.cost_guides(cost[rows], i - 1))
            self._keep(f"stage{i - 1}.up", lambda: stage.up(prev))
            out = stage.fuse_split(prev, terms[i - 1][b], cost_guide, weights[i - 1])
            return self._keep(f"stage{i - 1}.fuse", out)

        for i in range(4):
            head = self.head if i == 3 else self.cer_heads[i]
            n = cost.shape[0] // batch  # classes entering this step
            grid = (size[0] << i, size[1] << i)
            if chunked:
                x = self._chunked_step(i, produce, batch, n, grid, head, aux, topk, heads)
                if i == 3:
                    return x, heads, survivors
            else:
                pre = produce(i, slice(None), slice(None))
                if i == 3:
                    return self._keep("head", head(pre)).view(batch, -1, *grid), heads, survivors
                if aux or topk is not None:
                    heads.append(self._keep(f"cer{i}", head(pre.detach())).view(batch, -1, *grid))
                if topk is not None:
                    heads[-1] = cer_survivors(heads[-1], topk)
                    pre = pre[heads[-1]]
                x = self._keep(f"stage{i}.spatial", stages[i].spatial(pre))
            if topk is not None:  # fast mode (batch 1): the step left the local survivors in heads
                local = heads.pop()
                keep, cost = keep[local], cost[local]
                survivors.append(keep)
            x = self._keep(
                f"stage{i}.class_attn", stages[i].class_attn(x, batch, self._chunk_elements() * chunked)
            )
        raise AssertionError("unreachable")

    def _chunk_elements(self) -> int:
        """``chunk_bytes`` in elements of the decoder's dtype."""
        return max(1, self.chunk_bytes // self.head.weight.element_size())

    def _chunked_step(
        self,
        i: int,
        produce: Callable[[int, slice, slice], torch.Tensor],
        batch: int,
        n: int,
        size: tuple[int, int],
        head: nn.Module,
        aux: bool,
        topk: int | None,
        heads: list[torch.Tensor],
    ) -> torch.Tensor:
        """Step i in chunks of classes: produce the stage input, its CER head (``aux``: the (B, n, H, W)
        logits are appended to ``heads``; fast mode: the local survivor indices) and the ConvNeXt block
        (i < 3), or the final head (i = 3). Returns the block output (B*n', C, H, W) or (B, n, H, W)
        logits."""
        width, pixels = self._widths[i], size[0] * size[1]
        budget = self._chunk_elements()
        step = max(1, budget // (2 * width * pixels))
        chunks = [
            (b, slice(b * n + k, b * n + min(k + step, n))) for b in range(batch) for k in range(0, n, step)
        ]
        tile = max(1, budget // (4 * width))
        like = self.head.weight

        def buffer(rows: int, channels: int) -> torch.Tensor:
            return torch.empty(rows, channels, *size, dtype=like.dtype, device=like.device, memory_format=CL)

        scores = buffer(batch * n, 1) if i == 3 or aux or topk is not None else None
        if i == 3:
            assert scores is not None
            for b, rows in chunks:
                scores[rows] = head(produce(i, rows, slice(b, b + 1)))
            return scores.view(batch, n, *size)
        spatial = self.fusion_stages()[i].spatial
        if topk is None:  # produce, score and refine each chunk while it is in cache
            out = buffer(batch * n, width)
            for b, rows in chunks:
                pre = produce(i, rows, slice(b, b + 1))
                if scores is not None:
                    scores[rows] = head(pre)
                out[rows] = spatial(pre, tile)
            if scores is not None:
                heads.append(scores.view(batch, n, *size))
            return out
        pre_all = buffer(n, width)  # fast mode (batch 1): every class is scored before any is refined
        assert scores is not None
        for _, rows in chunks:
            pre = produce(i, rows, slice(0, 1))
            pre_all[rows], scores[rows] = pre, head(pre)
        local = cer_survivors(scores.view(1, n, *size), topk)
        heads.append(local)
        out = buffer(local.numel(), width)
        for k in range(0, local.numel(), step):
            out[k : k + step] = spatial(pre_all[local[k : k + step]], tile)
        return out
