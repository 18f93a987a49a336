"""Seconds per image against the number of classes K, one line per model/mode and version (PNG).

Reads the JSON lines ``bench_segment --json`` writes (the last row wins for a repeated case) and
draws log-log lines: solid for "after", dashed for "before"; one panel per CPU kind ("native bf16",
where ``dtype="auto"`` means bf16, and "AVX2-only", where it means fp32: the row's "cpu kind", or
``--kind`` for rows written before the bench recorded it). matplotlib is a bench-only dependency
(``pip install matplotlib``); the package does not need it.

    python -m bench.plot results.jsonl docs/performance_k.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

Series = dict[tuple[str, str, str], dict[int, float]]


def load_rows(path: Path, key: str = "s/img", kind: str = "unrecorded") -> dict[str, Series]:
    """{cpu kind: {(run, dtype, version): {K: row[key]}}} from a JSON-lines file.

    ``kind`` labels rows without a "cpu kind" field (written before the bench recorded it).
    """
    kinds: dict[str, Series] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            series = kinds.setdefault(row.get("cpu kind", kind), {})
            series.setdefault((row["run"], row["dtype"], row["version"]), {})[int(row["K"])] = row[key]
    return kinds


def plot_seconds(
    rows: Path, out: Path, title: str | None = None, cpu_rows: Path | None = None, kind: str = "unrecorded"
) -> None:
    """Write the PNG ``out``: a panel per CPU kind in ``rows`` (and CPU-seconds panels from ``cpu_rows``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(series, f"{cpu}: {title or 'Segmenter.predict, 2 threads, wall clock'}")
              for cpu, series in sorted(load_rows(rows, "s/img", kind).items())]
    if cpu_rows is not None:
        panels += [(series, f"{cpu}: 1 thread, process CPU seconds")
                   for cpu, series in sorted(load_rows(cpu_rows, "CPU s", kind).items())]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.5), dpi=100, squeeze=False)
    for ax, (series, label) in zip(axes[0], panels):
        _panel(plt, ax, series, label)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _panel(plt, ax, series: Series, title: str) -> None:
    runs = sorted({(run, dtype) for run, dtype, _ in series})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, dtype) in enumerate(runs):
        for version, style in (("before", "--"), ("after", "-")):
            points = series.get((run, dtype, version))
            if not points:
                continue
            ks = sorted(points)
            label = f"{run.replace(':inference=', ' ')} {dtype} ({version})"
            color = colors[i % len(colors)]
            ax.plot(ks, [points[k] for k in ks], style, marker="o", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ks = sorted({k for points in series.values() for k in points})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("classes K")
    ax.set_ylabel("seconds per 640 x 853 image")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def markdown_table(path: Path) -> str:
    """Markdown before/after table (model x K x dtype) from ``bench_segment --json`` rows."""
    rows: dict[tuple[str, int, str], dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault((row["run"], int(row["K"]), row["dtype"]), {})[row["version"]] = row
    out = ["| model, mode | K | dtype | GFLOP | s/img before | s/img after | CPU s before / after | "
           "% peak after (peak GFLOP/s) | peak RSS MiB before / after | load before / after |",
           "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict | None, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r and r.get(key) == r.get(key) else "—"  # NaN != NaN

    for (run, k, dtype), pair in rows.items():
        b, a = pair.get("before"), pair.get("after")
        ref = a or b
        out.append(
            f"| {run.replace(':inference=', ', ')} | {k} | {dtype} | {ref['GFLOP']:.0f} | "
            f"{cell(b, 's/img', '.2f')} | {cell(a, 's/img', '.2f')} | "
            f"{cell(b, 'CPU s', '.2f')} / {cell(a, 'CPU s', '.2f')} | "
            f"{cell(a, '% peak', '.0f')} ({cell(a, 'peak GFLOP/s', '.0f')}) | "
            f"{cell(b, 'peak RSS MiB', '.0f')} / {cell(a, 'peak RSS MiB', '.0f')} | "
            f"{cell(b, 'load', '.1f')} / {cell(a, 'load', '.1f')} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title")
    parser.add_argument("--cpu-rows", type=Path, help="rows of a --threads 1 run: a CPU-seconds panel")
    parser.add_argument("--markdown", action="store_true", help="also print a before/after markdown table")
    parser.add_argument("--kind", default="unrecorded", help="CPU kind of rows that do not record one")
    args = parser.parse_args()
    plot_seconds(args.rows, args.out, args.title, args.cpu_rows, args.kind)
    if args.markdown:
        print(markdown_table(args.rows))


if __name__ == "__main__":
    main()
