"""SED decoder building blocks: ConvNeXt block, linear class attention, DoubleConv, fusion stage.

Per-class maps are ``(B*K, C, H, W)`` with the image index outer, channels-last in memory. The
fusion stage keeps the literal official form (:meth:`FusionStage.forward`, the reference) and the
split form the decoder runs (:meth:`FusionStage.split_weights`, :meth:`FusionStage.image_term`,
:meth:`FusionStage.fuse_split`); see :mod:`ovss.models.sed_decoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.upconv import bias_map, fold_up_conv, graph_constants, up_conv


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

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v of (N, L, C) tokens in one GEMM: (N, L, 3C)."""
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        return F.linear(x, weight, bias)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head linear attention over the sequence axis: (N, L, C) -> (N, L, C)."""
        n, length, c = x.shape
        qkv = self.qkv(x)  # (N, L, 3C)
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
                part = view[b, :, p0 : p0 + pixels]  # (K, P, C): K runs of P*C contiguous elements
                part.copy_(self.doubled_layer(part.contiguous(), classes_first=True))
        return x

    def doubled_layer(self, seq: torch.Tensor, classes_first: bool = False) -> torch.Tensor:
        """``seq + layer(seq)`` (the unpooled update, ``x + (x + delta)``) for inference, in fewer passes.

        The same function as :meth:`layer`, organised for memory traffic and FLOPs: q/k feature maps in
        place on the qkv GEMM output, and each head's attention in whichever order of the products is
        cheaper for L classes of head width D (both are exact rewritings of ``q (k^T v) / (q ksum)``):

        * L < D: ``a = q k^T`` (L x L per head, non-negative), ``a v / (rowsum(a) + eps)``;
        * otherwise: ``kv = k^T v`` (D x D per head), ``q kv / (q ksum + eps)``.

        Args:
            seq: (N, L, C) contiguous, N pixels of L classes; (L, N, C) when ``classes_first`` (the
                layout of a channels-last map's pixel chunk, so no transposes around the layer). Not
                modified.
            classes_first: the layout of ``seq`` (and of the result).

        Returns:
            new tensor, the layout of ``seq``.
        """
        c = seq.shape[2]
        length, n = seq.shape[:2] if classes_first else seq.shape[1::-1]
        heads, d = self.heads, c // self.heads
        qkv = self.qkv(self.norm1(seq))  # (N, L, 3C) or (L, N, 3C)
        elu_plus_one_(qkv[..., : 2 * c], exp_form=qkv.dtype == torch.bfloat16)  # feature map of q, k
        split = (length, n, heads, d) if classes_first else (n, length, heads, d)
        order = (1, 2, 0, 3) if classes_first else (0, 2, 1, 3)
        q, k, v = (qkv[..., i * c : (i + 1) * c].view(split).permute(order) for i in range(3))  # (N, h, L, D)
        if length < d:  # (N, h, L, L) scores: the official denominator q . sum(k) is their row sum
            scores = torch.matmul(q, k.transpose(-1, -2))
            num, den = torch.matmul(scores, v), scores.sum(-1, keepdim=True)
        else:  # (N, h, D, D) key-value products
            num = torch.matmul(q, torch.matmul(k.transpose(-1, -2), v))
            den = (q * k.sum(2, keepdim=True)).sum(-1, keepdim=True)
        num = num.div_(den.add_(self.eps))  # (N, h, L, D)
        t = (num.permute(2, 0, 1, 3) if classes_first else num.transpose(1, 2)).reshape(seq.shape)
        t.add_(seq)  # seq + attention
        out = self.fc2(F.relu(self.fc1(self.norm2(t)), inplace=True))
        return out.add_(t).add_(seq)


def elu_plus_one_(x: torch.Tensor, exp_form: bool) -> torch.Tensor:
    """``x <- elu(x) + 1`` in place; ``exp_form``: as ``max(x, 0) + exp(min(x, 0))``, the same function
    (rounding apart) in two cheap passes, faster than ``elu`` in bf16 but not in fp32."""
    if exp_form:
        negative = x.clamp_max(0).exp_()
        return x.clamp_min_(0).add_(negative)
    return F.elu(x, inplace=True).add_(1.0)


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
        if torch.jit.is_tracing():  # ONNX export: the kernels are constants of the graph
            return graph_constants(self.split_weights)
        w1, cu = self.fuse.conv1.weight, self.up.out_channels
        g = (w1.shape[1] - cu) // 2
        up, bias = fold_up_conv(self.up, w1[:, :cu])
        return up, w1[:, cu : cu + g], w1[:, cu + g :], bias

    def image_term(self, image_guide: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class-independent part of the first fusion conv: (B, g, H, W) -> (B, d, H, W)."""
        return F.conv2d(image_guide, weights[1], padding=1) + bias_map(weights[3], image_guide)

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
        z = up_conv(x, weights[0]) + F.conv2d(cost_guide, weights[2], padding=1)
        n, d, hh, ww = image_term.shape
        z = (z.view(n, -1, d, hh, ww) + image_term.unsqueeze(1)).flatten(0, 1)
        return self.fuse.tail(z)
