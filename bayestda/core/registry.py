"""Registries of named declarations (tasks, model families, TDA methods), filled as their modules are imported.

Each declaration lives in its own module, which registers it when imported. `loaded()` first imports every module
of the registry's package (`bayestda.tasks`, `bayestda.models`, `bayestda.methods`), so a new module there is found
without being listed anywhere, then the installed plug-ins (`plugins`); a module elsewhere (a `--plugin` file, a
test) registers itself when it is imported.

Every declaration remembers where it came from (`origin`): None for the package's own and for modules imported
as usual, the plug-in's path or module name for one loaded by `plugins.load`. A run config names the plug-ins of
its task and family, so that later steps can load them again. A name declared twice by different plug-ins (or by
a plug-in and the package) is refused in one line; a module that registers again (a re-import, a test fixture)
replaces its own declaration.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

from . import plugins
from .errors import UserError


class Registry(dict):
    instances: ClassVar[dict[str, Registry]] = {}  # kind -> its registry, for lookups from below their layers (`known`)

    def __init__(self, package: str, kind: str):
        super().__init__()
        self.package, self.kind = package, kind  # kind: "task", "model family", "method", for messages
        self.origins: dict[str, str | None] = {}
        self._imported = False
        Registry.instances[kind] = self

    def add(self, name: str, declaration) -> None:
        """Register `declaration` under `name`, from the plug-in being loaded now (if any)."""
        origin = plugins.loading()
        if origin is not None:
            self.loaded()  # the package's own first, so that a plug-in cannot shadow one unnoticed
        if name in self and self.origins.get(name) != origin:
            raise UserError(f"{self.kind} {name!r} is declared by {plugins.describe(self.origins.get(name))} and by "
                            f"{plugins.describe(origin)}; rename it in one of them")  # fmt: skip
        self[name] = declaration
        self.origins[name] = origin
        plugins.registered(f"{self.kind} {name}")

    def origin(self, name: str) -> str | None:
        return self.origins.get(name)

    def loaded(self) -> Registry:
        """Every declaration: the package's own modules and the installed plug-ins imported first."""
        if not self._imported:
            self._imported = True
            with plugins.as_package():
                path = importlib.import_module(self.package).__path__
                for module in sorted(m.name for m in pkgutil.iter_modules(path)):
                    importlib.import_module(f"{self.package}.{module}")
            plugins.load_entry_points()
            self._sort()
        return self

    def _sort(self) -> None:
        """One order whichever module a caller happened to import first: the package's by name, then plug-ins'."""
        ordered = sorted(self.items(), key=lambda item: (self.origins.get(item[0]) is not None, item[0]))
        self.clear()
        self.update(ordered)


def known(kind: str, name: str) -> bool:
    """Whether a declaration of this kind ("task", "model family", "method") and name is registered (after the
    package's own are imported)."""
    registry = Registry.instances.get(kind)
    return registry is not None and name in registry.loaded()
