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

import torch
import torch.nn.functional as F
from torch import nn

from ovss.utils import is_tracing

CL = torch.channels_last


class ConvNeXtBlock(nn.Module):
    """SED's decoder ConvNeXt block: dw conv, LayerNorm, MLP (4x, GELU), layer scale, residual.

    Unlike timm's block the layer scale ``gamma`` starts at 1.0 (SED ``convnext.py``), and there is no
    drop-path. Channels-last inputs run without any permute copy.

    Args:
        dim: channels C.
        kernel_size: depthwise kernel (odd).
    """

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def mlp(self, y: torch.Tensor) -> torch.Tensor:
        """LayerNorm and MLP on channels-last rows, before the layer scale: (..., C) -> (..., C)."""
        return self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))

    def forward(self, x: torch.Tensor, tile_rows: int = 0) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W).

        ``tile_rows`` > 0 (no autograd): the MLP runs on tiles of that many pixels, in place on the
        depthwise-conv output, so its 4C-wide hidden layer stays small.
        """
        y = self.dwconv(x).permute(0, 2, 3, 1)
        if tile_rows <= 0 or torch.is_grad_enabled() or not y.is_contiguous():
            return x + (self.mlp(y) * self.gamma).permute(0, 3, 1, 2)
        rows = y.view(-1, y.shape[-1])  # the conv output of a channels-last input
        for r0 in range(0, rows.shape[0], tile_rows):
            tile = rows[r0 : r0 + tile_rows]
            torch.mul(self.mlp(tile), self.gamma, out=tile)
        return y.add_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ClassAttention(nn.Module):
    """Pre-LN transformer layer across the classes at every (pooled) pixel, linear attention.

    Attention is "Transformers are RNNs" linear attention with feature map elu(x) + 1 and 4 heads;
    then an MLP (4x, ReLU). Pixels are average-pooled by ``pool`` first and the update is upsampled
    back (bilinear, align_corners=True). Official quirk kept for checkpoint parity
    (SED ``model.py`` ClassTransformerLayer): the result is ``x + up(pool(x) + delta)``, i.e.
    ``2x + delta`` when the pool is 1x1.

    Args:
        dim: channels C.
        heads: attention heads (C divisible by heads).
        pool_train: (ph, pw) average-pool kernel (= stride) in training mode.
        pool_test: (ph, pw) kernel in eval mode (the official eval uses 1x1).
        eps: linear-attention denominator epsilon.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        pool_train: tuple[int, int] = (2, 2),
        pool_test: tuple[int, int] = (1, 1),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.pool_train = tuple(pool_train)
        self.pool_test = tuple(pool_test)
        self.eps = eps
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head linear attention over the sequence axis: (N, L, C) -> (N, L, C)."""
        n, length, c = x.shape
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])  # one GEMM for q, k, v
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = F.linear(x, weight, bias)  # (N, L, 3C)
        q, k = (F.elu(qkv[..., : 2 * c]) + 1.0).view(n, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        v = qkv[..., 2 * c :].view(n, length, self.heads, -1).transpose(1, 2)  # (N, h, L, D)
        # Dividing v by L (and multiplying back) changes nothing mathematically; it keeps the
        # key-value sums in fp16 range, as the official code does.
        kv = k.transpose(-1, -2) @ (v / length)  # (N, h, D, D)
        denom = q @ k.sum(dim=2).unsqueeze(-1) + self.eps  # (N, h, L, 1)
        out = (q @ kv) / denom * length
        return out.transpose(1, 2).reshape(n, length, c)

    def layer(self, seq: torch.Tensor) -> torch.Tensor:
        """The transformer layer on (N, L, C) sequences: attention and MLP residuals."""
        seq = seq + self.attend(self.norm1(seq))
        return seq + self.fc2(F.relu(self.fc1(self.norm2(seq)), inplace=True))

    def forward(self, x: torch.Tensor, batch: int, chunk_elements: int = 0) -> torch.Tensor:
        """Mix information across classes.

        Args:
            x: (B*K, C, H, W), image index outer.
            batch: B.
            chunk_elements: > 0 (unpooled, no autograd): update ``x`` in place, a chunk of pixels at a
                time, with about this many elements in the largest temporary (the MLP hidden layer).

        Returns:
            (B*K, C, H, W) (``x`` itself when updated in place).
        """
        c, height, width = x.shape[1:]
        pool = self.pool_train if self.training else self.pool_test
        if pool == (1, 1) and chunk_elements > 0:
            return self._in_place(x, batch, chunk_elements)
        pooled = pool != (1, 1)
        xp = F.avg_pool2d(x, pool) if pooled else x
        h, w = xp.shape[-2:]
        seq = xp.permute(0, 2, 3, 1).reshape(batch, -1, h * w, c).transpose(1, 2).flatten(0, 1)
        seq = self.layer(seq)  # (B*h*w, K, C)
        y = seq.view(batch, h, w, -1, c).permute(0, 3, 1, 2, 4).flatten(0, 1).permute(0, 3, 1, 2)
        if pooled:
            y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=True)
        return x + y

    def _in_place(self, x: torch.Tensor, batch: int, chunk_elements: int) -> torch.Tensor:
        bk, c, h, w = x.shape
        num_classes = bk // batch
        pixels = max(16, chunk_elements // (num_classes * 4 * c))
        view = x.permute(0, 2, 3, 1).view(batch, num_classes, h * w, c)  # x is channels-last
        for b in range(batch):
            for p0 in range(0, h * w, pixels):
                part = view[b, :, p0 : p0 + pixels]  # (K, P, C)
                seq = part.transpose(0, 1)
                part.copy_((seq + self.layer(seq)).transpose(0, 1))  # x + (x + delta)
        return x


class DoubleConv(nn.Module):
    """(Conv3x3 without bias, GroupNorm(out // 16 groups), ReLU) twice.

    Args:
        in_dim: input channels.
        out_dim: output channels (a multiple of 16 is safest; groups = out_dim // 16).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        groups = out_dim // 16
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_dim)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        """Everything after ``conv1``: (N, out_dim, H, W) -> (N, out_dim, H, W)."""
        z = F.relu(self.norm1(z), inplace=True)
        return F.relu(self.norm2(self.conv2(z)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim, H, W) -> (N, out_dim, H, W)."""
        return self.tail(self.conv1(x))


class FusionStage(nn.Module):
    """One decoder stage: FAM (spatial ConvNeXt block + class attention), then SFM (2x up + skips).

    Args:
        in_dim: input channels C.
        out_dim: output channels d.
        guide_dim: channels g of each guidance (image skip and cost); the up-conv gives C - g.
        kernel_size: ConvNeXt depthwise kernel.
        heads: class-attention heads.
        pool_train, pool_test: class-attention pooling kernels.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        guide_dim: int,
        kernel_size: int,
        heads: int,
        pool_train: tuple[int, int],
        pool_test: tuple[int, int],
    ) -> None:
        super().__init__()
        self.spatial = ConvNeXtBlock(in_dim, kernel_size)
        self.class_attn = ClassAttention(in_dim, heads, pool_train, pool_test)
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guide_dim, kernel_size=2, stride=2)
        self.fuse = DoubleConv(in_dim + guide_dim, out_dim)

    def forward(
        self, x: torch.Tensor, image_guide: torch.Tensor, cost_guide: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """The literal official stage (reference form; the decoder runs the split form).

        Args:
            x: (B*K, C, h, w).
            image_guide: (B, g, 2h, 2w), shared by the K classes of each image.
            cost_guide: (B*K, g, 2h, 2w).
            batch: B.

        Returns:
            (B*K, d, 2h, 2w).
        """
        x = self.class_attn(self.spatial(x), batch)
        x = self.up(x)
        image_guide = image_guide.repeat_interleave(x.shape[0] // batch, dim=0)
        return self.fuse(torch.cat([x, image_guide, cost_guide], dim=1))

    def split_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fusion conv split by input, with the up-conv folded in (composed in float32).

        Returns:
            ``up`` (C, d, 4, 4): ConvTranspose2d(stride 2, padding 1) kernel equal to
            ``conv1[:, :C-g] o up``; ``image`` (d, g, 3, 3) and ``cost`` (d, g, 3, 3): ``conv1`` on the
            two guidances; ``bias`` (d, 1, 3, 3): ``conv1[:, :C-g]`` applied to the up-conv bias (used
            on a map of ones, so it is exact at the borders where the padding hides some taps).
        """
        if torch.jit.is_tracing():  # ONNX export: fold them into constants (the exporter needs kernels
            state = torch._C._get_tracing_state()  # of static shape; traced computed kernels have none)
            torch._C._set_tracing_state(None)
            try:
                return tuple(w.detach().clone() for w in self.split_weights())  # type: ignore[return-value]
            finally:
                torch._C._set_tracing_state(state)
        w1, cu = self.fuse.conv1.weight, self.up.out_channels
        g, dtype = (w1.shape[1] - cu) // 2, w1.dtype
        wide = torch.promote_types(dtype, torch.float32)  # bf16/fp16 weights are composed in float32
        w_up = w1[:, :cu].to(wide)
        # full 2-D convolution of the 2x2 up kernel with the 3x3 kernel, summed over the C-g channels
        up = F.conv2d(F.pad(self.up.weight.to(wide), (2, 2, 2, 2)), w_up)
        bias = (w_up * self.up.bias.to(wide).view(1, -1, 1, 1)).sum(1, keepdim=True)
        return up.to(dtype), w1[:, cu : cu + g], w1[:, cu + g :], bias.to(dtype)

    def image_term(self, image_guide: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class-independent part of the first fusion conv: (B, g, H, W) -> (B, d, H, W)."""
        ones = image_guide.new_ones(1, 1, *image_guide.shape[-2:])
        return F.conv2d(image_guide, weights[1], padding=1) + F.conv2d(ones, weights[3], padding=1)

    def fuse_split(
        self,
        x: torch.Tensor,
        image_term: torch.Tensor,
        cost_guide: torch.Tensor,
        weights: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """``fuse(cat[up(x), image_guide, cost_guide])`` from the split weights.

        Args:
            x: (n*K', C, h, w) class-attention output, n images of K' classes each.
            image_term: (n, d, 2h, 2w) from :meth:`image_term`.
            cost_guide: (n*K', g, 2h, 2w).
            weights: :meth:`split_weights`.

        Returns:
            (n*K', d, 2h, 2w).
        """
        z = F.conv_transpose2d(x, weights[0], stride=2, padding=1) + F.conv2d(
            cost_guide, weights[2], padding=1
        )
        n, d, hh, ww = image_term.shape
        z = (z.view(n, -1, d, hh, ww) + image_term.unsqueeze(1)).flatten(0, 1)
        return self.fuse.tail(z)


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
        chunk_elements: inference without autograd runs the per-class work in chunks of classes and the
            class attention in chunks of pixels, each with about this many elements in its largest
            temporary; 0 = whole tensors (what training, tracing and recording use).
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
        chunk_elements: int = 1 << 23,
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
        self.chunk_elements = chunk_elements
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

    def _keep(self, name: str, value: Callable[[], torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
        """Record ``value`` (a tensor, or a function computing it) while :meth:`recording`; returns it."""
        if self._record is not None:
            value = value() if callable(value) else value
            self._record[name] = value.detach()
        return None if callable(value) else value

    def forward(
        self, dense: torch.Tensor, text: torch.Tensor, skips: Sequence[torch.Tensor], aux: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full decoder on all classes (training and normal inference).

        Args:
            dense: (B, E, h, w) dense CLIP embedding (stride 32).
            text: (K, P, E) text embeddings.
            skips: image features in stage order: res4 (B, ., 2h, 2w), res3 (4h), res2 (8h).
            aux: also compute the CER heads (training targets); inference passes False.

        Returns:
            logits (B, K, 8h, 8w) before sigmoid, and the three CER head logits
            [(B, K, h, w), (B, K, 2h, 2w), (B, K, 4h, 4w)] computed on detached features ([] if not aux).
        """
        logits, heads, _ = self._decode(dense, text, skips, aux, None)
        return logits, heads

    @torch.no_grad()
    def forward_fast(
        self, dense: torch.Tensor, text: torch.Tensor, skips: Sequence[torch.Tensor], topk: int
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

        Returns:
            probabilities (1, K, 8h, 8w) and the surviving class indices entering each stage,
            [(K1,), (K2,), (K3,)] int64, absolute (into the K classes), ascending.
        """
        logits, _, survivors = self._decode(dense, text, skips, False, topk)
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
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Logits (B, K', 8h, 8w) of the K' final classes, CER head logits (if ``aux``), survivors (fast)."""
        batch, size = dense.shape[0], tuple(dense.shape[-2:])
        chunked = self.chunk_elements > 0 and not (
            torch.is_grad_enabled() or is_tracing() or self._record is not None
        )
        cost = self.cost_volume(dense, text).contiguous(memory_format=CL)  # (B*K, P, h, w)
        guides = self.image_guides(skips)
        weights = [stage.split_weights() for stage in self.stages]
        terms = [stage.image_term(g, wt) for stage, g, wt in zip(self.stages, guides, weights)]
        for i, g in enumerate(guides):
            self._keep(f"image_guide{i}", g)
        keep = torch.arange(text.shape[0], device=dense.device)
        survivors: list[torch.Tensor] = []
        heads: list[torch.Tensor] = []
        x = cost  # the previous stage's class-attention output (i >= 1)

        def produce(i: int, rows: slice, b: slice) -> torch.Tensor:
            """Input of stage i (its ConvNeXt block's; i = 3: the head's) for the given rows of images b."""
            if i == 0:
                return self._keep("embed", self.cost_embed(cost[rows]))
            stage, prev = self.stages[i - 1], x[rows]
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
                x = self._keep(f"stage{i}.spatial", self.stages[i].spatial(pre))
            if topk is not None:  # fast mode (batch 1): the step left the local survivors in heads
                local = heads.pop()
                keep, cost = keep[local], cost[local]
                survivors.append(keep)
            x = self._keep(
                f"stage{i}.class_attn", self.stages[i].class_attn(x, batch, self.chunk_elements * chunked)
            )
        raise AssertionError("unreachable")

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
        step = max(1, self.chunk_elements // (2 * width * pixels))
        chunks = [
            (b, slice(b * n + k, b * n + min(k + step, n))) for b in range(batch) for k in range(0, n, step)
        ]
        tile = max(1, self.chunk_elements // (4 * width))
        like = self.head.weight

        def buffer(rows: int, channels: int) -> torch.Tensor:
            return torch.empty(rows, channels, *size, dtype=like.dtype, device=like.device, memory_format=CL)

        scores = buffer(batch * n, 1) if i == 3 or aux or topk is not None else None
        if i == 3:
            for b, rows in chunks:
                scores[rows] = head(produce(i, rows, slice(b, b + 1)))
            return scores.view(batch, n, *size)
        spatial = self.stages[i].spatial
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
        for _, rows in chunks:
            pre = produce(i, rows, slice(0, 1))
            pre_all[rows], scores[rows] = pre, head(pre)
        local = cer_survivors(scores.view(1, n, *size), topk)
        heads.append(local)
        out = buffer(local.numel(), width)
        for k in range(0, local.numel(), step):
            out[k : k + step] = spatial(pre_all[local[k : k + step]], tile)
        return out
