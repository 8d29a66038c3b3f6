"""Name → object registries: one per kind of plug-in (methods, backbones, dataset layouts, datasets).

A registry is the one place a name lives. A module adds its object with ``@REGISTRY.register("name", **meta)``
(or ``REGISTRY.add("name", obj, **meta)``) and is found by being in its package: the package calls
``REGISTRY.discover(__name__)`` once, which imports every public module in it. Everything that lists names — the
parameter validation, the tests' parametrization, the benchmarks, the docs tests — reads ``names()``, filtered by
metadata where it needs a subset (``METHODS.names(kind="seed")``).

A registry is a read-only ``Mapping[str, T]``: ``REGISTRY[name]`` (or :meth:`lookup`) fails with
:class:`UnknownNameError`, whose message lists the choices and suggests close names. An entry registered with
``prefix=True`` claims every name that starts with it (``"timm/"`` → ``"timm/resnet50"``, …); exact names win,
then the longest prefix.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

__all__ = ["Entry", "Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """A name no entry of the registry claims. A ``ValueError`` (a wrong parameter value: pydantic validators report
    it as such) and a ``KeyError`` (a failed mapping lookup: ``Mapping.get`` and ``in`` behave as for a dict)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registration: the object, its metadata, and its module (where the class or function is defined, else the
    module that registered the object)."""

    name: str
    obj: T
    meta: Mapping[str, Any] = field(default_factory=dict)
    module: str | None = None
    prefix: bool = False

    @property
    def label(self) -> str:
        """The name as listed to a user: a prefix entry reads ``timm/<name>``."""
        return f"{self.name}<name>" if self.prefix else self.name


class Registry(Mapping[str, T]):
    """Entries of one ``kind`` (the word used in messages: "method", "backbone", "dataset", …).

    ``required``: metadata keys every registration must give (e.g. a method's ``kind``, ``paper``, ``doc``), so a
    new entry without them fails at import, naming the key.
    """

    def __init__(self, kind: str, *, required: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.required = tuple(required)
        self._entries: dict[str, Entry[T]] = {}
        self._discovered: set[str] = set()

    # --- registration -------------------------------------------------------------------------------
    def add(self, name: str, obj: T, *, prefix: bool = False, **meta: Any) -> T:
        """Register ``obj`` under ``name`` (with ``prefix=True``: every name starting with ``name``). A name taken
        twice is refused, naming both modules."""
        return self._add(name, obj, prefix, meta, sys._getframe(1).f_globals.get("__name__"))

    def register(self, name: str, *, prefix: bool = False, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the object unchanged."""
        module = sys._getframe(1).f_globals.get("__name__")

        def deco(obj: T) -> T:
            return self._add(name, obj, prefix, meta, module)

        return deco

    def _add(self, name: str, obj: T, prefix: bool, meta: dict[str, Any], caller: str | None) -> T:
        # where it was defined: a class's or function's own module, else the module that registered it
        module = getattr(obj, "__module__", None) if hasattr(obj, "__qualname__") else caller
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        missing = [k for k in self.required if k not in meta]
        if missing:
            raise ValueError(f"{self.kind} {name!r} (in {module}): registration needs metadata {missing}")
        if name in self._entries:
            first = self._entries[name].module
            raise ValueError(f"{self.kind} {name!r} registered twice (by {first} and by {module})")
        self._entries[name] = Entry(name, obj, MappingProxyType(dict(meta)), module, prefix)
        return obj

    def discover(self, package: str) -> list[str]:
        """Import every public module (no leading ``_``) of ``package``, in name order, so that each registers its
        entries; once per package. Returns the modules imported. An import error is not swallowed."""
        if package in self._discovered:
            return []
        pkg = importlib.import_module(package)
        names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
        for name in names:
            importlib.import_module(f"{package}.{name}")
        self._discovered.add(package)
        return [f"{package}.{n}" for n in names]

    # --- lookup -------------------------------------------------------------------------------------
    def entry(self, name: str, *, what: str | None = None) -> Entry[T]:
        """The entry claiming ``name``: the exact name, else the longest prefix entry it starts with. ``what``
        names the parameter in the error (default: the registry's kind)."""
        if isinstance(name, str):
            hit = self._entries.get(name)
            if hit is not None and not hit.prefix:
                return hit
            prefixes = [e for e in self._entries.values() if e.prefix and name.startswith(e.name) and name != e.name]
            if prefixes:
                return max(prefixes, key=lambda e: len(e.name))
        raise UnknownNameError(self.unknown_message(name, what))

    def lookup(self, name: str, *, what: str | None = None) -> T:
        """The object registered for ``name``; :class:`UnknownNameError` (listing the choices) otherwise."""
        return self.entry(name, what=what).obj

    def meta(self, name: str) -> Mapping[str, Any]:
        return self.entry(name).meta

    def check(self, name: str, *, what: str | None = None) -> str:
        """``name`` if some entry claims it, else :class:`UnknownNameError` (for validators)."""
        self.entry(name, what=what)
        return name

    def entries(self, **where: Any) -> list[Entry[T]]:
        """Every entry, sorted by name; with ``where``, only those whose metadata has each of those values."""
        return sorted(
            (e for e in self._entries.values() if all(e.meta.get(k, _MISSING) == v for k, v in where.items())),
            key=lambda e: e.name,
        )

    def names(self, **where: Any) -> list[str]:
        """The names a user may give, sorted (a prefix entry as ``prefix<name>``); ``where`` filters on metadata
        as in :meth:`entries`."""
        return [e.label for e in self.entries(**where)]

    def unknown_message(self, name: Any, what: str | None = None) -> str:
        choices = self.names()
        msg = f"unknown {what or self.kind} {name!r}"
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        return msg + f" (choose one of: {', '.join(choices) if choices else f'no {self.kind} is registered'})"

    # --- Mapping (over the exact names; prefix entries are listed by names() and entries()) ------------
    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __contains__(self, name: object) -> bool:
        try:
            self.entry(name)  # type: ignore[arg-type]
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return (e.name for e in self.entries() if not e.prefix)

    def __len__(self) -> int:
        return sum(not e.prefix for e in self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


_MISSING = object()
