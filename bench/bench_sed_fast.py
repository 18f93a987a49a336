"""SED decoder cost: every class vs category early rejection (CER, fast inference, top-k).

Workload: a SED-B-shaped model (ConvNeXt-B CLIP, E = 640, decoder [64, 32, 16], kernel 9) with random
weights, a 459-class vocabulary (PASCAL-Context-459 size) with random text embeddings, one real
photo test-resized as the predictor does (short side 640) and squashed to the official 768x768.
The encoder runs once; the decoder is timed in both modes on its features, and the score maps are
compared (fraction of output pixels whose argmax class changes).

Random weights rank classes almost arbitrarily, so CER keeps many more classes than a trained
model would, and the speed-up is a lower bound; the printed survivor counts say what was kept.
``--shared-bias s`` sets the per-pixel LayerNorm bias before the CLIP projection to s * N(0, 1) (as
the parity fixtures do): the dense embedding gets a pixel-independent part, pixels agree more on the
class ranking and CER rejects more. Each class's 80 template embeddings are one random class
direction plus ``--template-spread`` noise (real CLIP templates of a class are close).

    python -m bench.bench_sed_fast --threads 2
    python -m bench.bench_sed_fast --width half --size 512   # quicker, smaller encoder
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import print_table, setup_threads, timed
from ovss.models.sed import SED, sed_convnext_b, valid_region

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "quokka.jpg"



def _postprocess(probs: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The official ``sem_seg_postprocess``: crop the valid region, resize it bilinearly to ``size``."""
    return F.interpolate(valid_region(probs, padded, size), size=size, mode="bilinear", align_corners=False)

def load_image(model: SED, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, h, w) CLIP-normalised photo (short side 640) and its size; noise if the photo is absent."""
    if PHOTO.is_file():
        import numpy as np
        from PIL import Image

        img = Image.open(PHOTO).convert("RGB")
        h, w = model.config.test_resize.output_size(img.height, img.width)
        rgb = torch.from_numpy(np.array(img.resize((w, h), Image.BILINEAR))).permute(2, 0, 1).float()
    else:
        h, w = 640, 960
        rgb = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    mean = torch.tensor(model.config.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.config.pixel_std).view(3, 1, 1)
    return ((rgb - mean) / std)[None], (h, w)


def text_embeddings(k: int, p: int, e: int, spread: float) -> torch.Tensor:
    """(K, P, E): per class a random direction plus ``spread`` noise per template, normalised."""
    g = torch.Generator().manual_seed(1)
    base = F.normalize(torch.randn(k, 1, e, generator=g), dim=-1)
    noise = torch.randn(k, p, e, generator=g) / e**0.5
    return F.normalize(base + spread * noise, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=459)
    parser.add_argument("--topk", type=int, nargs="+", default=[8])
    parser.add_argument("--size", type=int, default=768, help="CLIP input side (official 768)")
    parser.add_argument("--width", choices=["full", "half"], default="full", help="encoder width")
    parser.add_argument("--shared-bias", type=float, default=0.0, help="0 = plain random weights")
    parser.add_argument("--template-spread", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per mode (best is kept)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = setup_threads(args.threads)
    torch.manual_seed(0)

    cfg = sed_convnext_b().override(f"image_size={args.size}")
    if args.width == "half":
        cfg = cfg.override("clip.convnext.dims=[64,128,256,512]", "clip.convnext.depths=[3,3,9,3]")
    model = SED(cfg).eval()
    with torch.no_grad():
        bias = model.clip.visual.trunk.head.norm.bias
        bias.copy_(args.shared_bias * torch.randn(bias.shape, generator=torch.Generator().manual_seed(2)))
    convnext = cfg.clip.convnext
    print(
        f"SED-B-shaped, random weights: encoder ConvNeXt dims {list(convnext.dims)} depths "
        f"{list(convnext.depths)} ({args.width} width), decoder {list(cfg.decoder_dims)} hidden "
        f"{cfg.hidden_dim}; {args.classes} classes x {cfg.num_templates} templates; input "
        f"{args.size}x{args.size}; {threads} thread(s); shared bias {args.shared_bias}"
    )

    image, (h, w) = load_image(model, args.size)
    text = text_embeddings(args.classes, cfg.num_templates, cfg.clip.embed_dim, args.template_spread)
    with torch.no_grad():
        start = time.perf_counter()
        dense, skips = model.image_features(image)
        encoder_s = time.perf_counter() - start
        few = text[: min(16, args.classes)]  # warm-up: kernels and allocator, both paths
        model.decoder(dense, few, skips, aux=False)
        model.decoder.forward_fast(dense, few, skips, args.topk[0])
        full_s, logits = timed(
            lambda: model.decoder(dense, text, skips, aux=False)[0].sigmoid(), args.repeat, warmup=0
        )
        full = _postprocess(logits, tuple(image.shape[-2:]), (h, w)).argmax(1)
        del logits
        rows = [
            {
                "mode": "all classes",
                "decoder ms": full_s * 1e3,
                "speed-up": 1.0,
                "classes per stage": f"{args.classes}/{args.classes}/{args.classes}",
                "argmax changed": 0.0,
                "end-to-end ms": (encoder_s + full_s) * 1e3,
            }
        ]
        for k in args.topk:
            fast_s, (probs, kept) = timed(
                lambda k=k: model.decoder.forward_fast(dense, text, skips, k), args.repeat, warmup=0
            )
            fast = _postprocess(probs, tuple(image.shape[-2:]), (h, w)).argmax(1)
            rows.append(
                {
                    "mode": f"CER top-{k}",
                    "decoder ms": fast_s * 1e3,
                    "speed-up": full_s / fast_s,
                    "classes per stage": "/".join(str(len(s)) for s in kept),
                    "argmax changed": float((fast != full).float().mean()),
                    "end-to-end ms": (encoder_s + fast_s) * 1e3,
                }
            )
    print(f"encoder (run once): {encoder_s * 1e3:.0f} ms; output {h}x{w}")
    print_table(rows)


if __name__ == "__main__":
    main()
