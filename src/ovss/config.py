"""Typed configuration dataclasses that round-trip through JSON.

Every architecture and recipe in ovss is a ``kw_only`` dataclass deriving from :class:`Config`.
``to_dict``/``from_dict`` handle nested configs, tuples and optional fields; unknown keys raise a
:class:`~ovss.errors.ConfigError` listing the valid ones; ``override("a.b=v")`` applies the one
override syntax used by the CLI, typed from the field annotations.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ovss.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base of every config dataclass: JSON round trip and typed dotted overrides."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every config checks that its numbers are finite before its own validation runs: NaN passes
        # every comparison (``lr <= 0`` is False), so a field check alone lets ``lr=NaN`` through.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_finite", False):

            @functools.wraps(own)
            def post_init(self: Config) -> None:
                check_finite(self)
                own(self)

            post_init._checks_finite = True  # type: ignore[attr-defined]  # a marker on the function
            cls.__post_init__ = post_init  # type: ignore[method-assign]  # replaces the own one

    def __post_init__(self) -> None:
        check_finite(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (nested configs become dicts, tuples become lists)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON text; also write it (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ovss.utils import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict; unknown keys raise ConfigError naming the valid keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _from_plain(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[C], text_or_path: str | Path) -> C:
        """Build from JSON text or a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON config: {e}") from None
        return cls.from_dict(data)

    def override(self: C, *assignments: str) -> C:
        """Return a copy with ``"a.b=value"`` overrides applied (value parsed as JSON, else str)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. solver.lr=1e-4)")
            try:
                value: Any = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            parts = key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    where = ".".join(parts[:i]) or "<root>"
                    valid = sorted(node) if isinstance(node, dict) else []
                    raise ConfigError(
                        f"unknown config key {key!r} (no {part!r} under {where}); valid: {valid}"
                    )
                if i == len(parts) - 1:
                    node[part] = value
                else:
                    node = node[part]
        return type(self).from_dict(data)


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an int above 0 (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_ints(config: Any, names: Iterable[str]) -> None:
    """Raise ConfigError naming the first of the fields ``names`` of ``config`` that is not a positive
    integer (:func:`is_positive_int`)."""
    for name in names:
        value = getattr(config, name)
        if not is_positive_int(value):
            raise ConfigError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


def check_finite(config: Config) -> None:
    """Raise ConfigError naming the first field of ``config`` that holds a NaN or infinite float (also
    inside tuples, lists and dicts; nested configs check themselves when they are built)."""
    for f in dataclasses.fields(config):
        bad = _non_finite(getattr(config, f.name, None))
        if bad is not None:
            raise ConfigError(
                f"{type(config).__name__}.{f.name} must be a finite number, got {bad}; give a real value "
                "(NaN and infinity are not accepted)"
            )


def _non_finite(value: Any) -> float | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        values = value
    elif isinstance(value, dict):
        values = list(value.values())
    else:
        return None
    for v in values:
        if not isinstance(v, Config) and (bad := _non_finite(v)) is not None:
            return bad
    return None


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _from_plain(tp: Any, value: Any, where: str) -> Any:
    """Coerce a JSON value to the annotated type ``tp`` (nested configs, tuples, optionals)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _from_plain(a, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {tp}")
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(_from_plain(a, v, where) for a, v in zip(args, value))
        inner = args[0] if args else Any
        return [_from_plain(inner, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return {k: _from_plain(args[1] if args else Any, v, where) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
