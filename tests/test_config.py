from __future__ import annotations

import dataclasses
import json

import pytest

from ovss.config import Config
from ovss.errors import ConfigError
from ovss.models.base import ModelConfig, ResizeConfig


@dataclasses.dataclass(kw_only=True)
class Inner(Config):
    size: int = 3
    scale: float = 0.5


@dataclasses.dataclass(kw_only=True)
class Outer(Config):
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: Inner | None = None
    dims: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 2.0)


def test_json_round_trip_nested_and_optional(tmp_path):
    cfg = Outer(name="y", inner=Inner(size=5), maybe=Inner(scale=2.0), dims=(4, 5, 6))
    path = tmp_path / "cfg.json"
    text = cfg.to_json(path)
    assert json.loads(path.read_text()) == json.loads(text)
    back = Outer.from_json(path)
    assert back == cfg
    assert isinstance(back.dims, tuple) and isinstance(back.inner, Inner)
    assert Outer.from_json(text) == cfg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown Outer key\(s\) \['nope'\]; valid keys: \['dims'"):
        Outer.from_dict({"nope": 1})


def test_type_errors_name_the_field():
    with pytest.raises(ConfigError, match="Inner.size: expected an integer"):
        Outer.from_dict({"inner": {"size": "big"}})
    with pytest.raises(ConfigError, match="expected 2 items"):
        Outer.from_dict({"pair": [1]})


def test_override_typed_dotted():
    cfg = Outer().override("inner.size=7", "name=hello", "dims=[3, 4]")
    assert cfg.inner.size == 7 and cfg.name == "hello" and cfg.dims == (3, 4)
    assert Outer().override("inner.scale=1").inner.scale == 1.0
    with pytest.raises(ConfigError, match="unknown config key 'inner.sz'.*valid: \\['scale', 'size'\\]"):
        Outer().override("inner.sz=1")
    with pytest.raises(ConfigError, match="key=value"):
        Outer().override("inner.size")


def test_model_config_resize_rules():
    cfg = ModelConfig()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    r = ResizeConfig(size=640, max_size=2560)
    assert r.output_size(375, 500) == (640, 853)  # detectron2 ResizeShortestEdge rounding
    assert r.output_size(100, 5000) == (51, 2560)  # long side capped
    assert ResizeConfig(mode="fixed", size=384).output_size(10, 20) == (384, 384)
    assert ResizeConfig(mode="none").output_size(10, 20) == (10, 20)
    with pytest.raises(ConfigError, match="must be positive"):
        ResizeConfig(size=0)
    with pytest.raises(ConfigError, match="not one of"):
        ResizeConfig.from_dict({"mode": "square"})
