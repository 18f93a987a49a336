"""One descriptor per model family, registered in one place.

A :class:`Family` holds everything the rest of the package knows about a family: its name and
display title, its config and model classes, its training task, the class-name variant it was
evaluated with, the model options it accepts (with their defaults per command) and the checkpoint
formats it reads. Each family's descriptor sits in its own model file, which calls
:func:`register_family` when imported; :data:`BUILTIN_MODULES` lists those files (the one
registration a new family adds). Every table that used to hold per-family knowledge (build, weights
messages, CLI options, training tasks, evaluation variants, the demo's widgets, export, model cards)
reads the descriptor.

Higher layers are referenced lazily: ``task`` is a ``"module:attribute"`` path (or a callable
returning the class) resolved by :mod:`ovss.engine.tasks`, and ``formats`` maps a checkpoint format
to the dotted path of its converter module, imported by :mod:`ovss.weights.detect` when used.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ovss.errors import UnknownModelError

# The model files whose import registers a built-in family, in listing order.
BUILTIN_MODULES = ("ovss.models.san", "ovss.models.catseg", "ovss.models.sed", "ovss.models.catseg_v1")

# The commands whose option defaults a family states ("segment" also covers ``ovss video``).
COMMANDS = ("segment", "eval", "export", "demo")


@dataclasses.dataclass(frozen=True)
class InferenceOption:
    """A family's ``inference=`` option (its test protocols).

    Args:
        modes: every accepted mode, in the order the demo lists them.
        labels: the demo's label of each mode (the mode itself when absent).
        defaults: per command of :data:`COMMANDS`, the mode used when none is given; a command not
            listed uses the model config's own ``inference``.
        exported: whether ``ovss export`` takes the option (otherwise the config's protocol is baked in
            and ``--inference`` is refused).
        offered: the demo's ``(modes, first selection)`` for a model whose config says ``inference``;
            by default :attr:`modes`, first the demo default or the config's own.
        foreign: values the demo's one radio may send for another family; they mean "the first
            selection".
    """

    modes: tuple[str, ...]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    exported: bool = True
    offered: Callable[[str], tuple[list[str], str]] | None = None
    foreign: tuple[str, ...] = ()

    def default(self, command: str, config_mode: str = "") -> str:
        """The mode ``command`` uses when none is given (``config_mode``: the config's ``inference``)."""
        return self.defaults.get(command, config_mode)

    def demo_modes(self, config_mode: str = "") -> tuple[list[str], str]:
        """(modes offered by the demo, the one selected at first) for a model of this family."""
        if self.offered is not None:
            return self.offered(config_mode)
        first = self.default("demo", config_mode) or self.modes[0]
        return list(self.modes), first


@dataclasses.dataclass(frozen=True)
class Family:
    """Descriptor of one model family (see the module docstring).

    Args:
        name: the family's name (registry entries and model files carry it).
        title: display name in messages (``"CAT-Seg v1"``).
        config_class, model_class: the :class:`~ovss.models.base.ModelConfig` and
            :class:`~ovss.models.base.SegmentationModel` subclasses.
        task: the training adapter, ``"module:attribute"`` or a callable returning it (engine layer,
            resolved at use); empty: the family cannot be trained.
        class_variant: the benchmark class-name list ``ovss eval`` uses (``ovss.data.catalog``).
        summary: one line for the model card.
        options: the predict options it accepts besides ``tta`` (``"inference"``, ``"fast"``, ...).
        inference: the ``inference=`` option, when in ``options``.
        formats: checkpoint format -> dotted path of its converter module (``detect``/``convert``).
    """

    name: str
    title: str
    config_class: type[Any]
    model_class: type[Any]
    task: str | Callable[[], type[Any]] = ""
    class_variant: str = "plain"
    summary: str = ""
    options: tuple[str, ...] = ()
    inference: InferenceOption | None = None
    formats: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def resolve_task(self) -> type[Any] | None:
        """The training adapter class (None when the family has none)."""
        if not self.task:
            return None
        if callable(self.task):
            return self.task()
        module, _, attribute = self.task.partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Family] = {}
_loaded = False


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (its model file calls this on import); returns it.

    Raises:
        ValueError: another family of that name, or with the same config class, is registered.
    """
    for other in _REGISTRY.values():
        if other.name != family.name and other.config_class is family.config_class:
            raise ValueError(f"{family.name}: config class already registered by {other.name}")
    known = _REGISTRY.get(family.name)
    if known is not None and known != family:
        raise ValueError(f"model family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def families() -> tuple[Family, ...]:
    """Every registered family, built-ins first in :data:`BUILTIN_MODULES` order."""
    _load_builtins()

    def order(family: Family) -> int:  # registration order follows imports; listing order does not
        module = family.model_class.__module__
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return tuple(sorted(_REGISTRY.values(), key=order))


def family_names() -> tuple[str, ...]:
    """Names of :func:`families`."""
    return tuple(f.name for f in families())


def get_family(name: str) -> Family:
    """The descriptor of family ``name``.

    Raises:
        UnknownModelError: no family of that name.
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model family {name!r}; known: {', '.join(family_names())}")
    return _REGISTRY[name]


def find_family(name: str) -> Family | None:
    """The descriptor of ``name``, or None (for messages about files of unknown families)."""
    _load_builtins()
    return _REGISTRY.get(name)


def family_for_config(config: Any) -> Family:
    """The family whose config class ``config`` is an instance of (the most derived match).

    Raises:
        UnknownModelError: no registered family has that config class.
    """
    for family in families():
        if type(config) is family.config_class:
            return family
    for family in families():
        if isinstance(config, family.config_class):
            return family
    raise UnknownModelError(f"{type(config).__name__} is not a registered model config")


def family_title(name: str) -> str:
    """Display title of family ``name`` (the name itself when unknown)."""
    family = find_family(name)
    return family.title if family is not None else name


def option_owners(option: str) -> list[Family]:
    """The families that accept model option ``option``."""
    return [f for f in families() if option in f.options]
