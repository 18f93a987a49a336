"""The fixture-required switch: a missing shared fixture skips, or fails under OVSS_REQUIRE_FIXTURES=1."""

from __future__ import annotations

import pytest

from tests.conftest import REQUIRE_FIXTURES_ENV, needs, parity_params


def test_a_missing_fixture_skips_or_fails_under_the_flag(tmp_path, monkeypatch):
    missing = tmp_path / "san_z" / "config.json"
    monkeypatch.delenv(REQUIRE_FIXTURES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="san_z/config.json not found"):
        needs(missing)
    monkeypatch.setenv(REQUIRE_FIXTURES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="OVSS_REQUIRE_FIXTURES=1 makes a missing fixture"):
        needs(missing)
    assert needs(tmp_path) == tmp_path


def test_parity_params_without_folders_carry_the_requirement(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_PARITY_DIR", str(tmp_path))
    (param,) = parity_params("sanmm_")
    (mark,) = param.marks
    assert param.id == "no-sanmm_-fixtures" and mark.name == "ovss_needs"
    assert str(mark.args[0]) == f"{tmp_path}/sanmm_*"
    (tmp_path / "sanmm_b").mkdir()
    assert [p.id for p in parity_params("sanmm_")] == ["sanmm_b"]
