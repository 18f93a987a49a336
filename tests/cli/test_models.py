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


def test_models_table_builds_no_model(capsys, tmp_path, monkeypatch):
    """The params column comes from the registry (its counts are checked against the meta-device models
    in tests/weights/test_registry.py): listing builds nothing, not even on the meta device."""
    import ovss.models.build
    from ovss.api.card import format_count
    from ovss.weights.registry import WEIGHTS

    def refuse(*args, **kwargs):
        raise AssertionError("ovss models built a model to count its parameters")

    monkeypatch.setattr(ovss.models.build, "build_model", refuse)
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    assert main(["models", "--all"]) == 0
    rows = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[2:] if line}
    for spec in WEIGHTS:
        assert spec.parameters is not None and rows[spec.name] == format_count(spec.parameters)
