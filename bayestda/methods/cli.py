"""The command line shared by the step-2 scripts (tda_cnn_scripts/<method>.py and tda_vit_scripts/<method>.py).

Each script is its docstring plus `tda_main(__doc__, <method>, <family>)`: the method's own flags live
here once, so the CNN and ViT scripts cannot drift apart.
"""

from __future__ import annotations

from ..cli import Parser, add_common_args, available_cores, resolve_device
from ..func import CHUNK, HVP_CHUNK
from ..paths import resolve_data_root, resolve_out_root, select_seeds
from .influence import CG_DAMPING, GGN_DAMPING, PAPER_LISSA
from .loo import PROTOCOLS
from .runner import run_method

# FastIF's LiSSA batch size: 8 in the paper's CNN code, 32 in its ViT code.
LISSA_BATCH = {"cnn": 8, "vit": 32}
# vmap chunks (`FunctionalModel`): samples per per-sample-gradient call, vectors per Hessian-vector product.
# ViT-B/16 keeps ~100 MB of activations per 224×224 image, so its chunks are small.
MEMORY = {"cnn": {"chunk": CHUNK, "hvp_chunk": HVP_CHUNK}, "vit": {"chunk": 16, "hvp_chunk": 1}}
# On a GPU the CNN's HVPs want wide batches: CIFAR10-50pc IF-paper took 93 s per seed at 25 and 23 s at 250 on
# an H100 (BENCHMARKS.md). The ViT keeps its memory-bound defaults.
GPU_HVP_CHUNK = {"cnn": 256}


def auto_hvp_chunk(family: str, on_gpu: bool) -> int:
    return GPU_HVP_CHUNK.get(family, MEMORY[family]["hvp_chunk"]) if on_gpu else MEMORY[family]["hvp_chunk"]


def _auto_or_count(p: Parser, flag: str, value: str) -> str | int:
    """A flag that takes `auto` or a whole number of at least 1; anything else is a one-line error."""
    if value == "auto":
        return value
    if not (value.isdigit() and int(value) >= 1):
        p.error(f"{flag} {value!r}: give auto or a whole number of at least 1")
    return int(value)


MODEL_HELP = {
    "cnn": "trained model to score: cnn, cnn3, or with a posterior suffix (cnn-deinit, ...)",
    "vit": "fine-tuned model to score: vit, or with a posterior suffix (vit-deinit, ...)",
}


def _if_flags(p: Parser, family: str) -> None:
    p.add_argument("--solver", default="paper", choices=["paper", "ggn", "cg"], help="how H^-1 is applied")
    p.add_argument(
        "--damping",
        type=float,
        default=None,
        help=f"lambda in (H + lambda I): ggn default {GGN_DAMPING:g}; cg default {CG_DAMPING:g}, the fixed point of "
        "the paper's LiSSA (CG needs H + lambda I positive definite, and trained CNNs' Hessians reach -1 to -3)",
    )
    p.add_argument("--tol", type=float, default=1e-6, help="cg: relative residual to stop at")
    p.add_argument("--max_iter", type=int, default=1000, help="cg: iteration limit")
    p.add_argument(
        "--lissa_batch_size", type=int, default=LISSA_BATCH[family], help="paper: LiSSA's batch size (as the original)"
    )
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float64"], help="default: float32 for paper, float64 otherwise"
    )
    p.add_argument(
        "--no_diagnostics", action="store_true", help="paper: skip the fixed-point diagnostics (saves ~15%%)"
    )


def _if_method(args, p: Parser) -> tuple[str, dict]:
    if args.damping is None:
        args.damping = CG_DAMPING if args.solver == "cg" else GGN_DAMPING
    if args.damping <= 0:
        p.error("--damping must be positive")
    if args.lissa_batch_size < 1:
        p.error("--lissa_batch_size must be at least 1")
    dtype = args.dtype or ("float32" if args.solver == "paper" else "float64")
    if args.solver == "paper":
        lissa = {**PAPER_LISSA, "batch_size": args.lissa_batch_size}
        return "if-paper", {"dtype": dtype, "diagnostics": not args.no_diagnostics, "lissa": lissa}
    opts = {"dtype": dtype, "damping": args.damping}
    if args.solver == "cg":
        opts |= {"tol": args.tol, "max_iter": args.max_iter}
    return f"if-{args.solver}", opts


def _loss_flags(p: Parser, family: str) -> None:
    p.add_argument(
        "--loss_dtype",
        default="float32",
        choices=["float32", "float64"],
        help="dtype of the test losses whose change is tau. float32 (as the paper) rounds a loss below ~1e-7 "
        "(a confident, correct prediction) to steps of 1.2e-7; float64 resolves it, from the same logits",
    )


def _loo_flags(p: Parser, family: str) -> None:
    _loss_flags(p, family)
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="which retraining defines the ground truth")
    p.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="CPU: processes, one thread each (results do not depend on it)",
    )
    p.add_argument(
        "--stack",
        default="auto",
        help="retrains trained together as one vmapped model (equal to separate retrains up to float rounding). "
        "auto: 1 on a CPU, where the one-thread loop is fastest; 64 on a GPU (the fastest on an H100). "
        "Models that use dropout in training (the ViT) always retrain one at a time",
    )


def _loo_method(args, p: Parser) -> tuple[str, dict]:
    if args.workers < 1:
        p.error("--workers must be at least 1")
    stack = _auto_or_count(p, "--stack", args.stack)
    return f"loo-{args.protocol}", {"workers": args.workers, "loss_dtype": args.loss_dtype, "stack": stack}


METHOD_FLAGS = {  # script name -> (add its flags, (args, parser) -> (method name, options))
    "gd": (None, lambda args, p: ("gd", {})),
    "gc": (None, lambda args, p: ("gc", {})),
    "ats": (_loss_flags, lambda args, p: ("ats", {"loss_dtype": args.loss_dtype})),
    "if": (_if_flags, _if_method),
    "loo": (_loo_flags, _loo_method),
}


def _memory_flags(p: Parser, family: str) -> None:
    m = MEMORY[family]
    p.add_argument(
        "--chunk", type=int, default=m["chunk"], help="samples per vmapped gradient call; lower it if memory runs out"
    )
    cpu, gpu = auto_hvp_chunk(family, on_gpu=False), auto_hvp_chunk(family, on_gpu=True)
    p.add_argument(
        "--hvp_chunk",
        default="auto",
        help=f"vectors per vmapped Hessian-vector product (IF); auto: {cpu} on a CPU, {gpu} on a GPU",
    )


def parse_method_args(doc: str, script: str, family: str = "cnn", argv: list[str] | None = None):
    """(args, method name, options) of a step-2 script's command line (`argv`, default sys.argv)."""
    add_flags, method_and_options = METHOD_FLAGS[script]
    p = Parser(doc)
    add_common_args(p)
    p.add_argument("--model", default=family, help=MODEL_HELP[family])
    if add_flags:
        add_flags(p, family)
    vmapped = script != "loo"  # every method but LOO runs through a FunctionalModel, whose chunks bound memory
    if vmapped:
        _memory_flags(p, family)
    args = p.parse_args(argv)
    method, options = method_and_options(args, p)
    if vmapped:
        args.hvp_chunk = _auto_or_count(p, "--hvp_chunk", args.hvp_chunk)
        if args.hvp_chunk == "auto":
            args.hvp_chunk = auto_hvp_chunk(family, on_gpu=resolve_device(args.device).type == "cuda")
        if args.chunk < 1:  # --hvp_chunk: checked by _auto_or_count
            p.error("--chunk must be at least 1")
        options = {**options, "chunk": args.chunk, "hvp_chunk": args.hvp_chunk}
    return args, method, options


def tda_main(doc: str, script: str, family: str = "cnn") -> None:
    """Parse the common flags plus a method's own, then score every requested seed."""
    args, method, options = parse_method_args(doc, script, family)
    out_root = resolve_out_root(args.out_root)
    done = run_method(method, args.model, args.task, args.num_per_class, select_seeds(args.seed_id), out_root,
                      resolve_data_root(args.data_root), resolve_device(args.device), options, args.overwrite)  # fmt: skip
    for seed, path in done.items():
        print(f"{method} {args.model} {args.task} {args.num_per_class}pc seed {seed}: "
              + (f"written {path}" if path else "already computed, skipped (--overwrite to redo)"))  # fmt: skip
