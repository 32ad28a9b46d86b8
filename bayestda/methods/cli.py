"""The command line shared by the step-2 scripts (tda_cnn_scripts/<method>.py)."""

from __future__ import annotations

from collections.abc import Callable

from ..cli import Parser, add_common_args, resolve_device
from ..paths import resolve_data_root, resolve_out_root, select_seeds
from .runner import run_method


def tda_main(doc: str, add_options: Callable | None, method_and_options: Callable) -> None:
    """Parse the common flags plus a method's own, then score every requested seed."""
    p = Parser(doc)
    add_common_args(p)
    p.add_argument(
        "--model", default="cnn", help="trained model to score: cnn, cnn3, or with a posterior suffix (cnn-deinit, ...)"
    )
    if add_options:
        add_options(p)
    args = p.parse_args()
    method, options = method_and_options(args, p)
    out_root = resolve_out_root(args.out_root)
    done = run_method(method, args.model, args.task, args.num_per_class, select_seeds(args.seed_id), out_root,
                      resolve_data_root(args.data_root), resolve_device(args.device), options, args.overwrite)  # fmt: skip
    for seed, path in done.items():
        print(f"{method} {args.model} {args.task} {args.num_per_class}pc seed {seed}: "
              + (f"written {path}" if path else "already computed, skipped (--overwrite to redo)"))  # fmt: skip
