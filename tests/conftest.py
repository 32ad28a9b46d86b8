"""Shared fixtures: the real offline datasets and a helper to run the step scripts as a user would."""

from __future__ import annotations

import os
import runpy
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


@pytest.fixture(scope="session")
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


@pytest.fixture
def script_help(monkeypatch, capsys):
    """A script's `--help` text, from its parser run in this process (a fresh interpreter per script costs
    seconds of imports; the scripts' shell entry is exercised by the end-to-end tests that run them)."""
    import bayestda.cli

    monkeypatch.setattr(bayestda.cli, "run", lambda main: main())  # no signal handlers or lifeline in pytest

    def help_text(script: str) -> str:
        monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / script), "--help"])
        monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends the repository root
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
        out = capsys.readouterr().out
        assert stop.value.code == 0, out
        return out

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
