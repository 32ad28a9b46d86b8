"""Commands suggested in error messages, runnable as written: they keep the user's own location flags.

A user who ran a step with `--out_root /scratch/run1` must be told to retrain under /scratch/run1, not under
the repository. `cli.Parser` remembers the location flags a script was given (`remember`), and every
suggested command is built by `command`, which adds those of them the suggested script accepts. Flags that
shape the numbers (--model, --task, --subsets, --num_per_class, --seed_id) come from the artifact itself.
"""

from __future__ import annotations

import shlex

from . import plugins

# The flags every step script of steps 0–2 accepts (cli.add_common_args); steps 3–4 take --out_root only.
LOCATION_FLAGS = ("out_root", "data_root", "paper_subsets_dir")

_given: dict[str, str] = {}


def remember(namespace) -> None:
    """Keep the location flags of a parsed command line (called by `cli.Parser.parse_args`)."""
    for name in LOCATION_FLAGS:
        if (value := getattr(namespace, name, None)) is not None:
            _given[name] = str(value)


def forget() -> None:
    _given.clear()


def command(argv: list[str], *extra: str, accepts: tuple[str, ...] = LOCATION_FLAGS) -> str:
    """`python <argv> <extra>`, plus those of the user's location flags that the script `accepts`, and a `--plugin`
    for every plug-in this process loaded (every script takes it)."""
    kept = [part for name in accepts if name in _given for part in (f"--{name}", _given[name])]
    plugged = [part for spec in plugins.loaded() for part in (plugins.FLAG, spec)]
    return shlex.join(["python", *argv, *extra, *kept, *plugged])
