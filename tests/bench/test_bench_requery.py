"""bench_requery's round summary: medians per case and version."""

from __future__ import annotations

from bench.bench_requery import summary


def test_summary_takes_medians_per_case_and_version():
    def row(version: str, frac: float) -> dict[str, object]:
        return {"run": "san", "K": 20, "dtype": "fp32", "version": version, "full s": 1.0,
                "requery s": frac, "fraction": frac, "full CPU s": 2.0, "requery CPU s": 2 * frac,
                "CPU fraction": frac, "handle MiB": 2.5}

    rows = [row("this", 0.1), row("before", 0.3), row("this", 0.5), row("before", 0.2), row("this", 0.2)]
    out = {r["version"]: r for r in summary(rows)}
    assert out["this"]["rounds"] == 3 and out["this"]["CPU fraction"] == 0.2
    assert out["before"]["rounds"] == 2 and abs(out["before"]["fraction"] - 0.25) < 1e-12
    assert out["this"]["requery CPU s"] == 0.4 and out["this"]["handle MiB"] == 2.5
