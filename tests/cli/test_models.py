"""``ovss models``: the table of registered weights."""

from __future__ import annotations

from ovss.cli.main import main


def test_models_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "san-vit-b16" in out and "hf:Mendel192/san/san_vit_b_16.pth" in out
    assert "test-san-tiny" in out and str(tmp_path) in out
    assert main(["models"]) == 0
    assert "test-san-tiny" not in capsys.readouterr().out
