"""The method registry: every TDA method is declared once, as a `Method` passed to `register`.

A declaration holds everything the steps need to know about a method:
- its name (the step-2 script `<folder>/<name>.py`) and, if it has variants, the option that selects one;
  a score file is named `<name>` or `<name>-<variant>` (`gd`, `if-ggn`, `loo-scratch`);
- its "helps" sign (`sign · τ > 0` means "z_j helps z") and its label in figures;
- its kind: scored on each checkpoint (`per_seed=False`), or once per seed from the seed's whole run
  (`per_seed=True`: LOO retrains, TracIn); a per-seed method with `one_per_seed` gives one τ per seed, not one
  per checkpoint (TracIn sums over the whole run), so steps 3–4 have only k = 1 for it;
- whether τ is measured by retraining (`retrained`: every LOO protocol) and which of its variants are a ground
  truth that the others are judged against (`ground_truth`: LOO's `scratch`, then `paired`; not `paper`, which
  mixes z_j's removal with more training): the report's fixed-sample table and distributional TDA read
  `ground_truths()`;
- whether τ is in loss units (`removal`): the factor that turns it into a prediction of
  L(z; θ without z_j) − L(z; θ), given the number of training points n; None for similarities (GD, GC, TRAK,
  TracIn), which predict no loss, so the distributional measures (`analysis.distributional`) refuse them;
- its options, a frozen dataclass (`core.options.option` fields): their defaults, --help text and ranges;
- its scorer:
  - per checkpoint: `score(fm, train, test, opts, run_config) -> ([n_train, n_test], diagnostics)`, with
    `fm` a `models.func.FunctionalModel` of the checkpoint (with its family's loss);
  - per seed: `score(samples, opts, device) -> ([n_ckpts, n_train, n_test], [diagnostics])`, with
    `samples` the seed's `runs.samples.SeedSamples`.

The step-2 scripts, the runner, steps 3 and 4, the figures and the report all read from here. Each
method registers itself in its own module under `bayestda/methods/` (`ats`, `grad_similarity`,
`influence`, `loo`, `trak`, `tracin`, `ud`), which the registry imports on first use; a plug-in's registers when it is
loaded (`core.plugins`; the README, "Your own model and data").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..core import hints
from ..core.errors import UserError
from ..core.options import check, option
from ..core.paths import REPO_ROOT, score_file
from ..core.registry import Registry
from ..data.tasks import task_argv
from ..models import families

PAPER_METHODS = ("loo-paper", "ats", "if-paper", "gd", "gc")  # the paper's five, in its order: steps 3–4's default


@dataclass(frozen=True)
class MemoryOptions:
    """The vmap chunk of a method that runs through `func.FunctionalModel`; results do not depend on it.
    None: the model family's default (`families.ModelFamily`)."""

    chunk: int | None = option(None, lambda: "samples per vmapped gradient call; lower it if memory runs out "
                               f"(default: the model family's: {families.defaults(lambda f: f.chunk)})",
                               minimum=1)  # fmt: skip

    def resolve_memory(self, family, on_gpu: bool):
        return dataclasses.replace(self, chunk=self.chunk or family.chunk)


@dataclass(frozen=True)
class HVPOptions(MemoryOptions):
    """MemoryOptions plus the chunk of Hessian-vector products, for methods that take them."""

    hvp_chunk: int | str = option("auto", lambda: "vectors per vmapped Hessian-vector product; auto: the model "
                                  "family's, on a CPU (on a GPU): " + families.defaults(
                                      lambda f: f"{f.hvp_chunk} ({f.auto_hvp_chunk(on_gpu=True)})"),
                                  auto=True, minimum=1)  # fmt: skip

    def resolve_memory(self, family, on_gpu: bool):
        hvp_chunk = family.auto_hvp_chunk(on_gpu) if self.hvp_chunk == "auto" else int(self.hvp_chunk)
        return dataclasses.replace(super().resolve_memory(family, on_gpu), hvp_chunk=hvp_chunk)


@dataclass(frozen=True)
class Method:
    name: str  # the step-2 script's stem; the score file's name, or its prefix if there are variants
    label: str  # in figures and tables
    helps_sign: int  # +1: a positive τ means z_j helps z; −1: a negative one does
    options: type  # a frozen dataclass of `options.option` fields: the script's own flags
    score: Callable
    per_seed: bool = False  # scored once per seed from the whole run (LOO), not on each checkpoint
    one_per_seed: bool = False  # one τ per seed ([1, n, m], at the run's last epoch): steps 3–4 have only k = 1
    variant: str | None = None  # the options field that picks a variant (its choices name the score files)
    loss_difference: bool = False  # τ is a difference of two evaluated test losses (float32 resolution applies)
    retrained: bool = False  # τ is measured by retraining (every variant), not approximated
    # The variants that are a ground truth, what the others are judged against, most preferred first (True: the
    # method itself, or all its variants); `ground_truths` orders them
    ground_truth: bool | tuple[str, ...] = False
    removal: Callable[[int], float] | None = None  # n -> factor: factor·τ predicts the loss change of removing z_j

    @property
    def variants(self) -> tuple[str, ...]:
        if self.variant is None:
            return ()
        return tuple(_field(self.options, self.variant).metadata["choices"])

    @property
    def default_variant(self) -> str | None:
        return None if self.variant is None else _field(self.options, self.variant).default

    def score_names(self) -> list[str]:
        """Every score-file name this method writes: `gd`, or `if-paper`, `if-ggn`, `if-cg`."""
        return [f"{self.name}-{v}" for v in self.variants] if self.variant else [self.name]

    def score_name(self, opts) -> str:
        return f"{self.name}-{getattr(opts, self.variant)}" if self.variant else self.name

    def default_options(self, score_name: str | None = None):
        """The options of a score-file name, with the method's defaults (`if-ggn` -> solver="ggn")."""
        kwargs = {}
        if self.variant and score_name and score_name != self.name:
            kwargs[self.variant] = score_name.split("-", 1)[1]
        return check(self.options(**kwargs))

    def resolve(self, opts, family, device) -> object:
        """Options with every family- or device-dependent default filled in: what the score file records."""
        on_gpu = getattr(device, "type", str(device).split(":")[0]) == "cuda"
        if hasattr(opts, "resolve_memory"):
            opts = opts.resolve_memory(family, on_gpu)
        if hasattr(opts, "resolve"):
            opts = opts.resolve(family, on_gpu)
        return opts

    def truths(self) -> list[str]:
        """The score-file names of this method that are ground truths, most preferred first."""
        if self.ground_truth is True:
            return self.score_names()
        return [f"{self.name}-{v}" if self.variant else self.name for v in self.ground_truth or ()]

    def script_argv(self, folder: str, score_name: str) -> list[str]:
        """The step-2 script of a score-file name, with the flag that picks its variant: `<folder>/<name>.py`, or for
        a method without a script of its own (a plug-in's) `<folder>/score.py --method <name>`."""
        argv = [f"{folder}/{self.name}.py"]
        if not (REPO_ROOT / argv[0]).is_file():
            argv = [f"{folder}/score.py", "--method", self.name]
        if self.variant and score_name != self.name:
            argv += [f"--{self.variant}", score_name.split("-", 1)[1]]
        return argv


def _field(cls, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


_METHODS = Registry("bayestda.methods", "method")


def register(method: Method) -> Method:
    """Make a method known to every step (it replaces one of the same name from the same module)."""
    if method.helps_sign not in (-1, 1):
        raise ValueError(f"{method.name}: helps_sign must be +1 or -1")
    if method.variant is not None and not method.variants:
        raise ValueError(f"{method.name}: the variant option {method.variant!r} needs choices")
    if bad := [v for v in method.truths() if v not in method.score_names()]:
        raise ValueError(f"{method.name}: ground_truth names {bad}, which are not among its variants")
    _METHODS.add(method.name, method)
    return method


def origin(name: str) -> str | None:
    """The plug-in that declared a method (of a script or score-file name), or None for the package's own."""
    return _METHODS.origin(get(name).name)


def all_methods() -> dict[str, Method]:
    return _METHODS.loaded()


def score_names() -> list[str]:
    """Every score-file name of every registered method."""
    return [n for m in all_methods().values() for n in m.score_names()]


def methods_with_scores(out_root, model: str, task: str, n: int, seeds: list[int]) -> list[str]:
    """Every registered method with a score file for each of the seeds, in registry order."""
    return [m for m in score_names() if all(score_file(out_root, model, m, task, n, s).is_file() for s in seeds)]


def get(name: str) -> Method:
    """The method of a script name (`if`) or a score-file name (`if-ggn`)."""
    methods = all_methods()
    base = name if name in methods else name.split("-", 1)[0]
    method = methods.get(base)
    if method is None or (name != base and name not in method.score_names()):
        raise UserError(f"unknown method {name!r}; choose from {', '.join(score_names())}")
    return method


def helps_sign(score_name: str) -> int:
    return get(score_name).helps_sign


def ground_truths(names: list[str] | None = None) -> list[str]:
    """The ground truths among `names` (default: every score-file name), most preferred first: in registry order, each
    method's in the order it declares (`loo-scratch`, then `loo-paired`)."""
    every = [t for m in all_methods().values() for t in m.truths()]
    return [t for t in every if names is None or t in names]


def is_ground_truth(score_name: str) -> bool:
    return score_name in get(score_name).truths()


def label(score_name: str) -> str:
    """`IF (ggn)` for if-ggn, `GD` for gd; a name outside the registry is shown as it is."""
    try:
        method = get(score_name)
    except UserError:
        return score_name
    variant = score_name[len(method.name) + 1 :]
    return method.label + (f" ({variant})" if variant else "")


def score_argv(model: str, score_name: str, task: str, num_per_class: int) -> list[str]:
    """The step-2 script and flags that write a method's score files (every missing seed without --seed_id)."""
    argv = get(score_name).script_argv(families.of_model(model).score_folder, score_name)
    return [argv[0], "--model", model, *task_argv(task), "--num_per_class", str(num_per_class), *argv[1:]]


def score_command(model: str, score_name: str, task: str, num_per_class: int, *extra: str) -> str:
    """The step-2 command that writes a method's score files, runnable as written (`hints`)."""
    return hints.command(score_argv(model, score_name, task, num_per_class), *extra)
