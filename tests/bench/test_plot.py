"""bench/plot.py keeps CPU kinds apart (one panel per kind), and the bench header names the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import cpu_info, device_header
from bench.plot import load_rows


def _row(kind: str | None, version: str, k: int, seconds: float) -> str:
    row = {"run": "san-vit-b16", "dtype": "bf16", "version": version, "K": k, "s/img": seconds, "CPU s": 1.0}
    if kind is not None:
        row["cpu kind"] = kind
    return json.dumps(row)


def test_rows_are_split_by_cpu_kind(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [_row("native bf16", "after", 20, 0.5), _row("AVX2-only", "after", 20, 2.0),
             _row(None, "before", 20, 3.0), _row("native bf16", "after", 20, 0.4)]  # the last row wins
    path.write_text("\n".join(lines) + "\n")
    kinds = load_rows(path, kind="AVX2-only")
    assert kinds == {
        "native bf16": {("san-vit-b16", "bf16", "after"): {20: 0.4}},
        "AVX2-only": {
            ("san-vit-b16", "bf16", "after"): {20: 2.0},
            ("san-vit-b16", "bf16", "before"): {20: 3.0},
        },
    }


def test_header_names_the_cpu_and_its_kind() -> None:
    info = cpu_info()
    assert info["kind"] in ("native bf16", "AVX2-only", "other")
    assert set(info["flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert f"kind: {info['kind']}" in device_header("cpu") and "GPU" not in device_header("cpu")
