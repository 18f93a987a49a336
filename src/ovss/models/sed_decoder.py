"""SED's gradual fusion decoder with category early rejection (CER).

Layout used throughout: classes are folded into the batch axis, ``(B*K, C, H, W)`` with the image
index outer (row ``b*K + k``), which is what the official ``'(B T)'`` rearranges produce.

Pipeline (sizes for a 768x768 input, h = w = 24):

```
cost      cos(dense (B,E,h,w), text (K,P,E))                  (B*K, P, h, w)
embed     Conv2d(P -> hidden, 7x7)                             (B*K, hidden, h, w)     -> CER head 0
stage i   ConvNeXt block (dw kxk) -> linear attention over classes -> ConvT 2x2 s2 (C -> C-g)
          ++ image guidance (g ch, shared by the classes) ++ cost guidance (g ch, per class)
          -> DoubleConv(C+g -> d_i)                            (B*K, d_i, 2^i h, 2^i w) -> CER head i
head      Conv2d(d_3 -> 1, 3x3)                                logits (B, K, 8h, 8w)
```

Fast inference (CER) keeps, before every stage, only the classes that are in the top-k of the
previous CER head at some pixel, and runs the rest of the decoder on those classes only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvNeXtBlock(nn.Module):
    """SED's decoder ConvNeXt block: dw conv, LayerNorm, MLP (4x, GELU), layer scale, residual.

    Unlike timm's block the layer scale ``gamma`` starts at 1.0 (SED ``convnext.py``), and there is no
    drop-path.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


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
        q, k, v = (
            proj(x).view(n, length, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )
        q = F.elu(q) + 1.0  # (N, h, L, D)
        k = F.elu(k) + 1.0
        # Dividing v by L (and multiplying back) changes nothing mathematically; it keeps the
        # key-value sums in fp16 range, as the official code does.
        kv = k.transpose(-1, -2) @ (v / length)  # (N, h, D, D)
        denom = q @ k.sum(dim=2).unsqueeze(-1) + self.eps  # (N, h, L, 1)
        out = (q @ kv) / denom * length
        return out.transpose(1, 2).reshape(n, length, c)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """Mix information across classes.

        Args:
            x: (B*K, C, H, W), image index outer.
            batch: B.

        Returns:
            (B*K, C, H, W).
        """
        bk, c, height, width = x.shape
        num_classes = bk // batch
        pool = self.pool_train if self.training else self.pool_test
        pooled = pool != (1, 1)
        xp = F.avg_pool2d(x, pool) if pooled else x
        h, w = xp.shape[-2:]
        seq = (
            xp.view(batch, num_classes, c, h, w).permute(0, 3, 4, 1, 2).reshape(batch * h * w, num_classes, c)
        )
        seq = seq + self.attend(self.norm1(seq))
        seq = seq + self.fc2(F.relu(self.fc1(self.norm2(seq))))
        y = seq.view(batch, h, w, num_classes, c).permute(0, 3, 4, 1, 2).reshape(bk, c, h, w)
        if pooled:
            y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=True)
        return x + y


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim, H, W) -> (N, out_dim, H, W)."""
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


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
        """Refine, upsample 2x and fuse.

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

    @staticmethod
    def cost_volume(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every pixel with every class and template (no temperature).

        Args:
            dense: (B, E, h, w) dense CLIP image embedding.
            text: (K, P, E) text embeddings.

        Returns:
            (B*K, P, h, w), image index outer.
        """
        b, e, h, w = dense.shape
        k, p, _ = text.shape
        img = F.normalize(dense, dim=1).reshape(b, e, h * w)
        txt = F.normalize(text, dim=-1).reshape(k * p, e)
        return (txt @ img).reshape(b * k, p, h, w)

    def image_guides(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Conv3x3 + ReLU projections of the skips (res4, res3, res2): [(B, g_i, ...)] per stage."""
        return [F.relu(proj(s)) for proj, s in zip(self.image_guidance, skips)]

    def forward(
        self, dense: torch.Tensor, text: torch.Tensor, skips: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full decoder on all classes (training and normal inference).

        Args:
            dense: (B, E, h, w) dense CLIP embedding (stride 32).
            text: (K, P, E) text embeddings.
            skips: image features in stage order: res4 (B, ., 2h, 2w), res3 (4h), res2 (8h).

        Returns:
            logits (B, K, 8h, 8w) before sigmoid, and the three CER head logits
            [(B, K, h, w), (B, K, 2h, 2w), (B, K, 4h, 4w)] computed on detached features.
        """
        batch, num_classes = dense.shape[0], text.shape[0]
        cost = self.cost_volume(dense, text)
        x = self.cost_embed(cost)
        guides = self.image_guides(skips)
        aux = []
        for i, stage in enumerate(self.stages):
            aux.append(self.cer_heads[i](x.detach()).view(batch, num_classes, *x.shape[-2:]))
            cost = F.relu(self.cost_guidance[i](cost))
            x = stage(x, guides[i], cost, batch)
        logits = self.head(x).view(batch, num_classes, *x.shape[-2:])
        return logits, aux

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
        num_classes = text.shape[0]
        cost = self.cost_volume(dense, text)
        x = self.cost_embed(cost)
        guides = self.image_guides(skips)
        keep = torch.arange(num_classes, device=dense.device)
        survivors = []
        for i, stage in enumerate(self.stages):
            local = cer_survivors(self.cer_heads[i](x).view(1, -1, *x.shape[-2:]), topk)
            keep = keep[local]
            survivors.append(keep)
            x, cost = x[local], cost[local]
            # The cost guidance is per class, so computing it for the survivors only is exact.
            cost = F.relu(self.cost_guidance[i](cost))
            x = stage(x, guides[i], cost, 1)
        probs = dense.new_zeros(1, num_classes, *x.shape[-2:])
        probs[0, keep] = self.head(x)[:, 0].sigmoid()
        return probs, survivors
