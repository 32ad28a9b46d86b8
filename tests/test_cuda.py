"""Every step on a CUDA device against the same step on the CPU, from the same checkpoints (skipped without CUDA).

The CPU paths are tested against slow references elsewhere. Here the GPU must give the same scores up to float32
rounding (TF32 is off unless asked for), so a device-specific bug (a tensor left on the CPU, a wrong dtype, an
operation that behaves differently on CUDA) cannot hide behind the CPU-only CI.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import single_thread

from bayestda.core.cli import resolve_device
from bayestda.core.paths import score_file, seed_model_dir
from bayestda.methods.cli import parse_method_args
from bayestda.methods.runner import run_method
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.training.recipe import RecipeOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def run_script(run_script):
    """The scripts in a fresh interpreter each: CUDA state and precision settings must not carry over."""
    return lambda script, *args, **kw: run_script(script, *args, fresh=True, **kw)


COMMON = ["--task", "mnist3", "--num_per_class", "10", "--seed_id", "0"]
CNN_METHODS = {  # method -> (script, extra flags, tolerance on ‖cuda − cpu‖ / ‖cpu‖)
    "gd": ("gd.py", [], 1e-5),
    "gc": ("gc.py", [], 1e-5),
    "ats": ("ats.py", [], 1e-4),
    "if-paper": ("if.py", ["--solver", "paper"], 1e-4),
    "if-ggn": ("if.py", ["--solver", "ggn"], 1e-4),
    "if-cg": ("if.py", ["--solver", "cg", "--tol", "1e-4", "--max_iter", "20"], 1e-3),
    "if-ekfac": ("if.py", ["--solver", "ekfac"], 1e-4),
    # retraining amplifies rounding, and τ is a small difference of two losses
    # on CUDA, LOO's retrains are stacked (`--stack auto`); on the CPU they run one at a time
    "loo-scratch": ("loo.py", ["--protocol", "scratch", "--workers", "1"], 1e-3),
    "loo-paper": ("loo.py", ["--protocol", "paper", "--workers", "1"], 1e-3),
    "loo-paired": ("loo.py", ["--protocol", "paired", "--workers", "1"], 1e-3),
    "trak": ("trak.py", ["--damping", "1e-3"], 1e-3),  # R is drawn on the CPU: the same matrix on both devices
    # the replay on CUDA retraces the CPU-trained run within `replay.TOLERANCE`, or is refused
    "tracin-cp": ("tracin.py", ["--kind", "cp"], 1e-3),
    "tracin-ideal": ("tracin.py", ["--kind", "ideal"], 1e-3),
    "ud": ("ud.py", [], 1e-3),  # a replay too
}
VIT_METHODS = {
    "gd": ("gd.py", [], 1e-4),
    "gc": ("gc.py", [], 1e-4),
    "ats": ("ats.py", [], 1e-3),
    "if-paper": ("if.py", ["--solver", "paper"], 1e-3),
    "if-ekfac": ("if.py", ["--solver", "ekfac"], 1e-3),
    "trak": ("trak.py", ["--damping", "1e-3"], 1e-3),
}
METHODS = {"cnn": CNN_METHODS, "vit": VIT_METHODS}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


def score_both_devices(family, methods, trained, data_root, tmp_path_factory):
    """{method: (cpu scores, cuda scores)}: each device scores its own copy of the same checkpoints, in this
    process (a fresh process per run would spend most of the time starting), with the options the script's
    command line gives."""
    roots = {}
    for device in ("cpu", "cuda"):
        roots[device] = tmp_path_factory.mktemp(f"{family}_{device}")
        shutil.copytree(trained / "models", roots[device] / "models")
    scores = {}
    for method, (script, extra, _) in methods.items():
        pair = []
        for device, root in roots.items():
            argv = [*COMMON, *extra, "--device", device, "--out_root", str(root)]
            _args, name, options = parse_method_args("", script.removesuffix(".py"), family, argv)
            assert name == method
            run_method(name, family, "mnist3", 10, [0], root, data_root, resolve_device(device), options)
            record = torch.load(score_file(root, family, method, "mnist3", 10, 0), weights_only=True)
            assert record["scores"].device.type == "cpu" and record["scores"].dtype == torch.float32
            assert record["config"]["device"].startswith(device)
            pair.append(record["scores"])
        scores[method] = tuple(pair)
    return scores


@pytest.fixture(scope="module")
def cnn_trained(tmp_path_factory, run_script):
    out = tmp_path_factory.mktemp("cnn_cpu")
    proc = run_script("train_cnn.py", *COMMON, "--epochs", "6", "--device", "cpu", "--out_root", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_cnn_training_on_cuda_follows_the_cpu_run(cnn_trained, run_script, tmp_path):
    """Same init and batch order on both devices: the first epochs agree to rounding, and the run is complete."""
    proc = run_script("train_cnn.py", *COMMON, "--epochs", "6", "--device", "cuda", "--out_root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cpu, cuda = (
        json.loads((seed_model_dir(root, "cnn", "mnist3", 10, 0) / "metrics.json").read_text())["epochs"]
        for root in (cnn_trained, tmp_path)
    )
    assert len(cuda) == 6
    for a, b in zip(cpu[:2], cuda[:2], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def vit_trained(tmp_path_factory, tiny_vit_dir, data_root):
    out = tmp_path_factory.mktemp("vit_cpu")
    spec = EnsembleSpec("mnist3", 10, "vit", recipe=RecipeOptions(epochs=3), model_name_or_path=str(tiny_vit_dir))
    with single_thread():
        train_ensemble(spec, [0], data_root, out, torch.device("cpu"))
    return out


@pytest.fixture(scope="module")
def scored(request, data_root, tmp_path_factory):
    """family -> {method: (cpu scores, cuda scores)}, each family trained and scored once, when first asked for."""
    cache = {}

    def get(family):
        if family not in cache:
            trained = request.getfixturevalue(f"{family}_trained")
            cache[family] = score_both_devices(family, METHODS[family], trained, data_root, tmp_path_factory)
        return cache[family]

    return get


@pytest.mark.parametrize(("family", "method"), [(f, m) for f, methods in METHODS.items() for m in methods])
def test_method_on_cuda_equals_cpu(scored, family, method):
    cpu, cuda = scored(family)[method]
    assert cpu.abs().sum() > 0 and torch.isfinite(cuda).all()
    assert relative_error(cuda, cpu) < METHODS[family][method][2]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_vit_finetuning_and_loo_run_on_cuda(tiny_vit_dir, run_script, tmp_path, precision):
    """Dropout draws differ between devices, so these are checked for completing with finite outputs only."""
    flags = [*COMMON, "--device", "cuda", "--out_root", str(tmp_path)]
    proc = run_script(
        "finetune_vit.py", *flags, "--epochs", "2", "--model_name_or_path", str(tiny_vit_dir), "--precision", precision
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_script("tda_vit_scripts/loo.py", *flags, "--protocol", "scratch")
    assert proc.returncode == 0, proc.stderr
    record = torch.load(score_file(tmp_path, "vit", "loo-scratch", "mnist3", 10, 0), weights_only=True)
    assert torch.isfinite(record["scores"]).all() and record["scores"].abs().sum() > 0


def test_run_experiment_pins_tasks_to_the_gpu(run_script, tmp_path):
    """The local backend on one GPU: one task at a time, pinned with CUDA_VISIBLE_DEVICES, every task done."""
    proc = run_script(
        "run_experiment.py", "--task", "mnist3", "--num_per_class", "10", "--seed_ids", "0", "1", "--epochs", "2",
        "--methods", "gd,ats", "--gpus", "0", "--out_root", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout and "GPU" in proc.stdout
    for seed in (0, 1):
        assert score_file(tmp_path, "cnn", "ats", "mnist3", 10, seed).is_file()
