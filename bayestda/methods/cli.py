"""The command line shared by the step-2 scripts (tda_cnn_scripts/<method>.py and tda_vit_scripts/<method>.py, and
<folder>/score.py --method NAME for a method without a script of its own, such as a plug-in's).

Each script is its docstring plus `tda_main(__doc__, <method>, <default model>)`. Its flags are the common
ones (`data.flags.add_common_args`), `--model`, and the fields of the method's options class (`registry.Method`),
so a method's flags are declared once, in its options, and the CNN and ViT scripts cannot drift apart.
"""

from __future__ import annotations

import sys

from ..core.cli import Parser, resolve_device
from ..core.errors import UserError
from ..core.options import add_arguments, from_args
from ..core.paths import resolve_data_root, resolve_out_root, select_seeds
from ..data.flags import add_common_args
from ..models import families
from . import registry
from .runner import resolve_options, run_method

GENERIC = "score"  # <folder>/score.py --method NAME: step 2 of a method without a script of its own (a plug-in's)


def parse_method_args(doc: str, script: str, model: str = "cnn", argv: list[str] | None = None):
    """(args, score-file name, resolved options) of a step-2 script's command line (`argv`, default sys.argv).

    `script` is the method's script name, or `score` for the generic script that takes `--method NAME`; `model` is
    the script's default `--model`."""
    p = Parser(doc)
    method = None
    if script == GENERIC:
        given = list(sys.argv[1:] if argv is None else argv)
        p.load_plugins(given)  # a plug-in's method is known once its plug-in is
        p.add_argument("--method", required=True,
                       help="the method to score: a registered name (a plug-in's); with it, --help lists its flags")  # fmt: skip
        name = next((given[i + 1] for i, a in enumerate(given[:-1]) if a == "--method"), None)
        if name is not None:
            try:
                method = registry.get(name)
            except UserError as exc:
                p.error(str(exc))
    else:
        method = registry.get(script)
    add_common_args(p)
    folder = families.of_model(model).score_folder
    names = [m for f in families.all_families().values() if f.score_folder == folder for m in f.models]
    p.add_argument("--model", default=model, help=f"trained model to score: {', '.join(names)}, or with a posterior "
                   "suffix (-deinit, -debatch)")  # fmt: skip
    if method is not None:
        add_arguments(p, method.options)
    args = p.parse_args(argv)
    try:
        opts = from_args(method.options, args)
        name = method.score_name(opts)
        opts = resolve_options(name, args.model, resolve_device(args.device), opts)
    except UserError as exc:
        p.error(str(exc))
    return args, name, opts


def tda_main(doc: str, script: str, model: str = "cnn") -> None:
    """Parse the common flags plus a method's own, then score every requested seed."""
    args, name, opts = parse_method_args(doc, script, model)
    out_root = resolve_out_root(args.out_root)
    done = run_method(name, args.model, args.task, args.num_per_class, select_seeds(args.seed_id), out_root,
                      resolve_data_root(args.data_root), resolve_device(args.device), opts, args.overwrite)  # fmt: skip
    for seed, path in done.items():
        print(f"{name} {args.model} {args.task} {args.num_per_class}pc seed {seed}: "
              + (f"written {path}" if path else "already computed, skipped (--overwrite to redo)"))  # fmt: skip
