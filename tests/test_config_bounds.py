"""Config numbers a user types must be finite: in the Python API, JSON and ``--set``, one line
before any work."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from ovss.cli.main import main
from ovss.config import Config
from ovss.errors import ConfigError
from tests.conftest import one_line_error


# ---------------------------------------------------------------------------------- finite config numbers
def _all_configs() -> list[Config]:
    import ovss.api.tta
    import ovss.data.augment
    import ovss.engine.config
    import ovss.models.catseg
    import ovss.models.catseg_v1
    import ovss.models.sed
    import ovss.towers.resnet
    import ovss.towers.swin  # noqa: F401  (each registers its Config subclasses)
    from ovss.models.san import SANConfig

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    instances = []
    for cls in sorted(set(subclasses(Config)), key=lambda c: c.__qualname__):
        if cls.__module__.startswith("tests"):
            continue
        instances.append(SANConfig().clip if cls.__name__ == "ClipConfig" else cls())
    return instances


def _float_fields(config: Config) -> list[str]:
    hints = typing.get_type_hints(type(config))
    return [f.name for f in dataclasses.fields(config) if "float" in str(hints[f.name])]


def _poisoned(value: typing.Any, bad: float) -> typing.Any:
    if isinstance(value, (tuple, list)):
        return type(value)([bad] * max(len(value), 1))
    if isinstance(value, dict):
        return {"backbone": bad}
    return bad


def test_every_float_field_of_every_config_must_be_finite():
    configs = _all_configs()
    names = {type(c).__name__ for c in configs}
    assert {"SolverConfig", "LossConfig", "TTAConfig", "SANConfig", "CATSegV1Config", "ClipConfig"} <= names
    checked = 0
    for config in configs:
        for name in _float_fields(config):
            for bad in (math.nan, math.inf, -math.inf):
                value = _poisoned(getattr(config, name), bad)
                with pytest.raises(ConfigError, match=rf"{type(config).__name__}\.{name} must be a finite"):
                    dataclasses.replace(config, **{name: value})  # the Python API
                data = {**config.to_dict(), name: value}
                with pytest.raises(ConfigError, match="must be a finite number"):
                    type(config).from_dict(data)  # JSON / --set
                checked += 1
    assert checked >= 3 * 40  # every float field of every config was tried


NON_FINITE = ["solver.lr=NaN", "solver.betas=[0.9, Infinity]", "loss.void_weight=-Infinity",
              'solver.lr_multipliers={"backbone": NaN}', "augment.single_category_max_area=NaN"]


@pytest.mark.parametrize("override", NON_FINITE)
def test_train_refuses_non_finite_numbers_in_one_line(override, tmp_path, capsys):
    assert main(["train", "--config", "tiny-san", "--out", str(tmp_path / "r"), "--set", override]) == 1
    assert "must be a finite number" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()
