"""Plug-ins: a user's own tasks, model families and methods, declared outside the package.

A plug-in is a Python file or an importable module that, when imported, registers declarations with the package's
registries (`data.tasks.register`, `models.families.register`, `methods.registry.register`). Three ways in:
- `--plugin PATH_OR_MODULE` (repeatable) on every script and on `run_experiment.py`, which passes it to every task
  on every backend; a path names a `.py` file, anything else is imported as a module;
- an installed package's entry point in the group `bayestda.plugins` (its value a module), loaded with the
  package's own declarations;
- recorded: a run config names the plug-ins of its task and model family (`config["plugins"]`, absolute paths or
  module names), so later steps load them from any checkpoint, score file or `metrics.json` without the flag
  (`ensure`), and a step given `--model/--task/--num_per_class` or `--experiment` finds them in the runs under
  `--out_root` (`load_recorded_runs`).

A plug-in that cannot be found or imported, or that registers nothing, is one line (`UserError`); so is a name that
two plug-ins (or a plug-in and the package) declare (`core.registry`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError
from .paths import run_dir

GROUP = "bayestda.plugins"  # entry-point group of installed plug-ins
FLAG = "--plugin"

_loading: list[str | None] = []  # the plug-in whose module is being imported now (innermost last)
_loaded: dict[str, list[str]] = {}  # canonical spec -> what it registered ("task digits", ...)
_entry_points_loaded = False


def loading() -> str | None:
    """The plug-in being imported now (its canonical spec), or None."""
    return _loading[-1] if _loading else None


@contextlib.contextmanager
def _as(origin: str | None):
    _loading.append(origin)
    try:
        yield
    finally:
        _loading.pop()


def as_package():
    """Declarations made inside this block are the package's own, whatever plug-in is being loaded."""
    return _as(None)


def registered(what: str) -> None:
    """Called by a registry for every declaration (`core.registry`)."""
    if (origin := loading()) is not None:
        _loaded.setdefault(origin, []).append(what)


def describe(origin: str | None) -> str:
    return "the package itself" if origin is None else f"plug-in {origin}"


def loaded() -> dict[str, list[str]]:
    """{plug-in: what it registered} of every plug-in loaded in this process."""
    return dict(_loaded)


def canonical(spec: str) -> str:
    """A plug-in's name as runs record it: a file's absolute path, or the module name."""
    return str(Path(spec).resolve()) if _is_path(spec) else spec


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def load(spec: str, source: str = FLAG) -> str:
    """Import a plug-in once (a file path or a module name); returns its canonical name. `source` says where the
    name came from, for the one-line error when it cannot be loaded."""
    name = canonical(spec)
    if name in _loaded:
        return name
    imported_before = not _is_path(spec) and spec in sys.modules  # its declarations were made then, as the package's
    _loaded[name] = []
    try:
        with _as(name):
            _import(spec, name, source)
    except BaseException:
        del _loaded[name]
        raise
    if not _loaded[name] and not imported_before:
        del _loaded[name]
        raise UserError(f"{source} {spec}: it declares no task, model family or method; a plug-in calls "
                        "register(...) (bayestda.data.tasks, bayestda.models.families, bayestda.methods.registry) "
                        "when it is imported (see examples/digits.py)")  # fmt: skip
    return name


def _import(spec: str, name: str, source: str) -> None:
    if _is_path(spec):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{source} {spec}: no such file ({path}); give the path of a .py file that declares a task, "
                            "model family or method, or the name of an importable module")  # fmt: skip
        module_name = f"bayestda_plugin_{path.stem}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # so that its classes pickle (worker processes) and dataclasses work
        try:
            module_spec.loader.exec_module(module)
        except UserError:
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise UserError(f"{source} {spec} failed to import: {_where(exc, path)}") from None
        return
    try:
        importlib.import_module(spec)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise UserError(f"{source} {spec}: no file or importable module of that name; give the path of a .py "
                            "file, or install the package that provides the module") from None  # fmt: skip
        raise UserError(f"{source} {spec} failed to import: {_where(exc)}") from None
    except Exception as exc:
        raise UserError(f"{source} {spec} failed to import: {_where(exc)}") from None


def _where(exc: BaseException, path: Path | None = None) -> str:
    """`TypeError: message (file.py, line 12)`: the innermost frame in the plug-in's own file if there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if path is not None and Path(f.filename) == path] or frames[-1:]
    at = f" ({Path(own[-1].filename).name}, line {own[-1].lineno})" if own else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{at}"


def load_all(specs: Iterable[str], source: str = FLAG) -> list[str]:
    return [load(spec, source) for spec in specs]


def from_argv(argv: list[str]) -> list[str]:
    """The `--plugin` values of a command line (`--plugin X` and `--plugin=X`), in order."""
    specs = []
    for i, arg in enumerate(argv):
        if arg == FLAG and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif arg.startswith(FLAG + "="):
            specs.append(arg.split("=", 1)[1])
    return specs


def load_entry_points() -> None:
    """Import every installed plug-in (entry-point group `bayestda.plugins`), once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=GROUP):
        load(entry.module, source=f"the installed entry point {entry.name} ({GROUP})")


def recorded(config: dict) -> list[str]:
    """The plug-ins a run config (or a score file's config) names."""
    specs = config.get("plugins", []) if isinstance(config, dict) else []
    return [s for s in specs if isinstance(s, str)]


def ensure(config: dict, source: str) -> None:
    """Load the plug-ins a run config records, unless its task and model family are registered already (the package's
    own, or given with --plugin, perhaps from a new path); one line naming the missing plug-in and the flag that
    supplies it if one cannot be loaded."""
    from .registry import known  # the registries sit on this module

    needs = [("task", str(config.get("task", "")).split("-")[0]), ("model family", config.get("family", "")),
             ("method", str(config.get("method", "")).split("-")[0])]  # fmt: skip
    if all(known(kind, name) for kind, name in needs if name):
        return
    for spec in recorded(config):
        if spec in _loaded:
            continue
        try:
            load(spec, source=f"{source} was made with plug-in")
        except UserError as exc:
            raise UserError(f"{exc}; if it moved, pass {FLAG} with its new path (or module name)") from None


def load_recorded_runs(out_root: Path, model: str, task: str, num_per_class) -> None:
    """Load the plug-ins that the training runs of an experiment recorded (their `metrics.json`), so that a step
    named by --model/--task/--num_per_class or --experiment needs no --plugin for a plug-in's task or family."""
    folder = run_dir(out_root, model, task, num_per_class)
    if not folder.is_dir():
        return
    for metrics in sorted(folder.glob("*/metrics.json")):
        try:
            config = json.loads(metrics.read_text()).get("config", {})
        except (OSError, ValueError, AttributeError):
            continue  # the step that reads it says what is wrong with it
        ensure(config, str(metrics))
