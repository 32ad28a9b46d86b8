"""A registry of named declarations (model families, TDA methods) that modules fill as they are imported.

Each declaration lives in its own module, which registers it when imported. `loaded()` first imports every
module of the registry's package (`bayestda.models`, `bayestda.methods`), so a new module there is found
without being listed anywhere; a module elsewhere (a user's, a test's) registers itself when it is imported.
"""

from __future__ import annotations

import importlib
import pkgutil


class Registry(dict):
    def __init__(self, package: str):
        super().__init__()
        self.package = package
        self._imported = False

    def loaded(self) -> Registry:
        """Every declaration, those of the package's modules included."""
        if not self._imported:
            self._imported = True
            path = importlib.import_module(self.package).__path__
            for module in sorted(m.name for m in pkgutil.iter_modules(path)):
                importlib.import_module(f"{self.package}.{module}")
            # one order whichever module a caller happened to import first: by name
            ordered = sorted(self.items())
            self.clear()
            self.update(ordered)
        return self
