"""One torch.compile trial and one CUDA-graph trial of SAN's network forward (images + text -> logits).

The forward ``model(images, text)`` (mask and class logits; no resize or reduction) of a random-weight
SAN is timed eagerly, compiled (``torch.compile``; the first call, which compiles, is reported
apart) and, on CUDA, captured once as a CUDA graph and replayed. Each trial reports the best time of
``--repeat`` calls and its largest difference from the eager output, or the one-line reason it failed;
a failing trial does not stop the others.

    python -m bench.bench_compile --device cuda                     # SAN ViT-B/16 at 640x864, auto dtype
    python -m bench.bench_compile --device cpu --model test-san-tiny --size 64 64 --backend eager
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench.common import device_sync, timeit


def _difference(out: dict, ref: dict) -> float:
    return max((out[k].float() - ref[k].float()).abs().max().item() for k in ("pred_masks", "pred_logits"))


def cuda_graph(model: torch.nn.Module, images: torch.Tensor, text: torch.Tensor) -> Callable[[], dict]:
    """Capture ``model(images, text)`` as a CUDA graph; returns a replay that yields the static outputs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            model(images, text)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = model(images, text)

    def replay() -> dict:
        graph.replay()
        return static

    return replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="san-vit-b16", help="a SAN registry name (random weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto", help="fp32 | bf16 | fp16 | auto")
    parser.add_argument("--size", type=int, nargs=2, default=[640, 864], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args()
    from bench.common import random_model
    from ovss.api.device import parse_device, parse_dtype

    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    model = random_model(args.model).eval().to(device, dtype)
    images = torch.randn(1, 3, *args.size, device=device, dtype=dtype)
    text = torch.nn.functional.normalize(
        torch.randn(args.classes, model.config.clip.embed_dim, device=device), dim=-1
    ).to(dtype)
    print(f"{args.model} on {device} ({dtype}), input {args.size[0]}x{args.size[1]}, K={args.classes}")
    with torch.inference_mode():
        ref = model(images, text)
        eager = timeit(lambda: model(images, text), args.repeat, warmup=0, sync=device_sync(device))
        print(f"eager: {eager * 1e3:.1f} ms")
        compile_trial = lambda: _compiled(model, images, text, args.backend)  # noqa: E731
        _trial("torch.compile", compile_trial, ref, device, args.repeat)
        if device.type == "cuda":
            _trial("CUDA graph", lambda: (0.0, cuda_graph(model, images, text)), ref, device, args.repeat)
        else:
            print("CUDA graph: skipped (needs a CUDA device)")


def _compiled(model, images, text, backend: str) -> tuple[float, Callable[[], dict]]:
    compiled = torch.compile(model, backend=backend)
    start = time.perf_counter()
    compiled(images, text)  # compiles
    return time.perf_counter() - start, lambda: compiled(images, text)


def _trial(name: str, build, ref: dict, device: torch.device, repeat: int) -> None:
    """Build a runner (``build() -> (setup seconds, fn)``), time it and compare with the eager output."""
    try:
        setup, fn = build()
        diff = _difference(fn(), ref)
        best = timeit(fn, repeat, warmup=0, sync=device_sync(device))
    except Exception as exc:  # a failed trial is a result: report it in one line and go on
        print(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return
    print(f"{name}: {best * 1e3:.1f} ms (setup {setup:.1f} s), max |difference| from eager {diff:.3g}")


if __name__ == "__main__":
    main()
