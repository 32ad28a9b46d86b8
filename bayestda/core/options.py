"""Typed options: a frozen dataclass whose fields are a script's flags.

A field declared with `option(...)` carries its `--help` text, its choices and its range, so the
dataclass is the one place that states a default. `add_arguments` turns the fields into argparse flags,
`from_args` builds the instance back from the parsed flags, and `check` validates any instance in one
line per problem. A default of `None` means "chosen from the model family or another option"; the help
text says how, and the owner's `resolve` fills it in before anything is computed, so score files record
the values used.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .errors import UserError

AUTO = "auto"


def option(default, help, *, choices=None, minimum=None, positive: bool = False, auto: bool = False,
           flag: str | None = None):  # fmt: skip
    """A dataclass field that is also a flag.

    `help` is a string, or a function that returns one when the flags are made (for help that reads other
    registries, such as each model family's default). `minimum`/`positive` bound a number; `auto` lets an integer field take the word `auto` as well;
    `flag` renames a boolean's switch (e.g. `no_diagnostics` for a field `diagnostics` that defaults to True).
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "positive": positive, "auto": auto, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def _fields(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "help" in f.metadata]


def _base_type(hint) -> type:
    """int for `int`, `int | None` and `int | str`; str, float, bool likewise."""
    args = typing.get_args(hint) or (hint,)
    for t in (bool, int, float, str):
        if t in args:
            return t
    raise TypeError(f"unsupported option type {hint!r}")


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata["flag"] or f.name)


def add_arguments(p: argparse.ArgumentParser, cls) -> None:
    """One flag per option field of `cls`."""
    for f, hint in _fields(cls):
        meta, kind = f.metadata, _base_type(hint)
        help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
        if kind is bool:
            # a switch flips the default: `--no_diagnostics` for diagnostics=True, `--x` for x=False
            p.add_argument(flag_name(f), dest=f.name, action="store_false" if f.default else "store_true",
                           help=help_text)  # fmt: skip
            continue
        kwargs = {"dest": f.name, "default": f.default, "help": help_text}
        if meta["choices"]:
            kwargs["choices"] = list(meta["choices"])
        if not meta["auto"]:
            kwargs["type"] = typed(kind)
        p.add_argument(flag_name(f), **kwargs)


def typed(kind: type):
    """An argparse `type` for int, float or str whose error reads `must be an integer, got 'x'`."""
    if kind is str:
        return str

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def _parse_auto(f: dataclasses.Field, value):
    if value == AUTO or isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise UserError(f"{flag_name(f)} {value!r}: give auto or a whole number of at least 1")


def from_args(cls, args: argparse.Namespace):
    """The options instance of parsed flags (fields without a flag keep their default); checked."""
    values = {}
    for f, _ in _fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = _parse_auto(f, value) if f.metadata["auto"] else value
    return check(cls(**values))


def check(opts):
    """`opts` itself, or a UserError naming the first flag out of range."""
    for f, _ in _fields(type(opts)):
        value, meta = getattr(opts, f.name), f.metadata
        if value is None or isinstance(value, bool) or value == AUTO:
            continue
        if meta["auto"]:
            value = _parse_auto(f, value)
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"{flag_name(f)} {value!r}: choose one of {', '.join(map(str, meta['choices']))}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise UserError(f"{flag_name(f)} must be at least {meta['minimum']}, got {value}")
        if meta["positive"] and not value > 0:
            raise UserError(f"{flag_name(f)} must be positive, got {value}")
    return opts
