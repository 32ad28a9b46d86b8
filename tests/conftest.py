"""Shared fixtures: the real offline datasets and a helper to run the step scripts as a user would."""

from __future__ import annotations

import io
import os
import runpy
import signal
import subprocess
import sys
import traceback
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from helpers import kept_fp32_precision

from bayestda.core import hints, plugins
from bayestda.core.cli import available_cores
from bayestda.core.paths import REPO_ROOT, resolve_data_root
from bayestda.data import sources, tasks
from bayestda.methods import registry
from bayestda.models import families

# Under pytest-xdist (`make test` runs one worker per core), each worker and the scripts it starts get an even
# share of the cores: torch's default, a thread per core in every worker, oversubscribes the CPU, and its
# spinning threads then run many times slower. The environment carries the share to the subprocesses.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, available_cores() // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def _data_root() -> Path:
    root = resolve_data_root(None)
    if not (root / "MNIST" / "raw").is_dir() and (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        root = SHARED_DATASETS
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """A folder with the real MNIST (required: the data tests must not silently pass without it)."""
    root = _data_root()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {root}; set BAYESTDA_DATA_ROOT (offline: ../shared/datasets)")
    return root


@pytest.fixture(scope="session")
def cifar_root(data_root) -> Path:
    """A folder with CIFAR-10 (`make test` builds the offline copy); tests needing it skip otherwise."""
    if not (data_root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no CIFAR-10 under {data_root}; build it: python ../shared/datasets/build_cifar10.py DIR")
    return data_root


def _refill(container, contents) -> None:
    """Make a dict, set or list hold exactly `contents` again, in place (others may hold a reference to it)."""
    container.clear()
    (container.extend if isinstance(container, list) else container.update)(contents)


def run_in_process(script: str | Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a top-level script as `python script args` would, but in this interpreter: a fresh one costs seconds
    of imports per call. Its stdout, stderr and exit status come back as from `subprocess.run`; what a script
    may change for the whole process (environment, sys.path, sys.argv, working folder, torch threads, RNG and
    float32 precision, the SIGTERM handler, remembered flags, CIFAR-10 warnings given, plug-ins loaded and what they
    registered) is put back afterwards, and starts as in a fresh interpreter. `OMP_NUM_THREADS` in `env` sets torch's threads for the run."""
    path = Path(script) if Path(script).is_absolute() else REPO_ROOT / script
    out, err, code = io.StringIO(), io.StringIO(), 0
    with ExitStack() as restore:
        restore.enter_context(kept_fp32_precision())
        environ, threads, rng = dict(os.environ), torch.get_num_threads(), torch.get_rng_state()
        restore.callback(_refill, os.environ, environ)
        restore.callback(torch.set_num_threads, threads)
        restore.callback(torch.set_rng_state, rng)
        restore.callback(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        restore.callback(os.chdir, os.getcwd())
        restore.callback(setattr, sys, "argv", sys.argv)
        restore.callback(_refill, sys.path, list(sys.path))  # the script prepends the repository root
        for kept in (hints._given, sources.UNVERIFIED_CIFAR, plugins._loaded):  # state a fresh interpreter lacks
            restore.callback(_refill, kept, kept.copy())
            kept.clear()
        restore.enter_context(kept_registries())
        os.environ.update(env or {})
        if "OMP_NUM_THREADS" in (env or {}):
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [str(path), *args]
        os.chdir(REPO_ROOT)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as stop:
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except BaseException:  # what an uncaught error would print before exit status 1
                traceback.print_exc()
                code = 1
    return subprocess.CompletedProcess([sys.executable, str(path), *args], code, out.getvalue(), err.getvalue())


@contextmanager
def kept_registries():
    """Put the task, family and method registries, and the plug-ins loaded, back as they were: what a plug-in
    registers stays with its test."""
    saved = [(r, dict(r.loaded()), dict(r.origins)) for r in (tasks._TASKS, families._FAMILIES, registry._METHODS)]
    loaded = dict(plugins._loaded)
    try:
        yield
    finally:
        for r, contents, origins in saved:
            _refill(r, contents)
            _refill(r.origins, origins)
        _refill(plugins._loaded, loaded)


@pytest.fixture(autouse=True)
def no_remembered_flags():
    """Every test starts as a fresh command line would: location flags that a parser remembered for suggested
    commands (`hints.remember`) in an earlier test of this worker must not show up in this one's messages."""
    hints.forget()
    yield
    hints.forget()


@pytest.fixture(scope="session")
def run_script(data_root):
    """Run a top-level script with the real datasets: in this interpreter by default (`run_in_process`), or,
    with `fresh=True` or `$BAYESTDA_TEST_SUBPROCESS=1`, in a subprocess as a user would from a shell (for what
    only a new process shows)."""

    def run(script: str, *args: str, env: dict | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
        full_env = {"BAYESTDA_DATA_ROOT": str(data_root), "PYTHONUNBUFFERED": "1", **(env or {})}
        if not (fresh or os.environ.get("BAYESTDA_TEST_SUBPROCESS") == "1"):
            return run_in_process(script, *args, env=full_env)
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / script), *args],
            cwd=REPO_ROOT,
            env={**os.environ, **full_env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run


@pytest.fixture
def script_help():
    """A script's `--help` text, from its parser run in this process (`run_in_process`)."""

    def help_text(script: str) -> str:
        proc = run_in_process(script, "--help")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    return help_text


def save_tiny_vit(path: Path, image_size: int, hidden: int, layers: int) -> Path:
    """A randomly initialised ViT classifier plus its image processor, written as `save_pretrained` would:
    the offline stand-in for google/vit-base-patch16-224-in21k (same code path, no download)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = ViTConfig(
            image_size=image_size, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=2, intermediate_size=2 * hidden,
        )  # fmt: skip
        ViTForImageClassification(config).save_pretrained(path)
    size = {"height": image_size, "width": image_size}
    ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """2 layers, hidden 32, 32×32 images: for fine-tuning and the scripts end to end."""
    return save_tiny_vit(tmp_path_factory.mktemp("tiny_vit"), image_size=32, hidden=32, layers=2)


@pytest.fixture(scope="session")
def micro_vit_dir(tmp_path_factory) -> Path:
    """1 layer, hidden 16, 16×16 images (5 tokens): small enough for explicit Hessians."""
    return save_tiny_vit(tmp_path_factory.mktemp("micro_vit"), image_size=16, hidden=16, layers=1)
