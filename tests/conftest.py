"""Shared fixtures: the real offline datasets and a helper to run the step scripts as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bayestda.paths import REPO_ROOT, resolve_data_root

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


@pytest.fixture
def run_script(data_root):
    """Run a top-level script in a subprocess, as a user would from a shell."""

    def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root), "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / script), *args],
            cwd=REPO_ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run
