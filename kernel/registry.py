"""A lazy, typed name -> implementation registry with entry-point plugins (after fsspec's registry)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Generic, TypeVar

from delibench.errors import UsageError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short kebab-case names to objects or to ``"module:attr"`` paths imported on first use.

    Third parties add entries through the entry-point group named ``group``.

    Args:
        group: The entry-point group (e.g. ``"delibench.loaders"``) and the registry's label.
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self._targets: dict[str, T | str] = {}
        self._errors: dict[str, str | None] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: T | str, *, clobber: bool = False, err: str | None = None) -> None:
        """Register ``target`` (an object or a ``"module:attr"`` path) under ``name``.

        Raises:
            ValueError: ``name`` is taken and ``clobber`` is false.
        """
        if name in self._targets and not clobber:
            raise ValueError(f"{self.group}: name {name!r} is already registered")
        self._targets[name] = target
        self._errors[name] = err

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._targets:
                self._targets[ep.name] = ep.value
                self._errors[ep.name] = None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_plugins()
        return sorted(self._targets)

    def paths(self) -> MappingProxyType[str, T | str]:
        """A read-only view of name -> object or import path."""
        self._load_plugins()
        return MappingProxyType(self._targets)

    def get(self, name: str) -> T:
        """Return the object for ``name``, importing it if needed.

        Raises:
            UsageError: Unknown name (with a "did you mean" suggestion) or an import failure
                (with the registered install hint).
        """
        self._load_plugins()
        if name not in self._targets:
            close = difflib.get_close_matches(name, self._targets, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(self.names())}"
            raise UsageError(f"unknown {self.group.rsplit('.', 1)[-1][:-1]} {name!r}", hint=hint)
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except ImportError as exc:
                raise UsageError(
                    f"{name!r} is not available: {exc}", hint=self._errors.get(name) or "install its package"
                ) from exc
            self._targets[name] = obj
            return obj
        return target

    def install_hint(self, name: str) -> str | None:
        """The hint registered for ``name``'s import failure (e.g. which extra to install)."""
        return self._errors.get(name)

    def importable(self, name: str) -> bool:
        """True when ``get(name)`` would succeed."""
        try:
            self.get(name)
        except UsageError:
            return False
        return True

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
