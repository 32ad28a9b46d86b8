"""Plug-ins: a task and model families declared only inside tests/ (tests/plugins/toy.py) run through steps 1–4 with
run_experiment.py, are found again by later steps from what the checkpoints recorded, and every way a plug-in can
be wrong is one line with exit status 2 and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_line_error

from bayestda.core import plugins
from bayestda.core.paths import REPO_ROOT, checkpoint_file, score_file, seed_model_dir
from bayestda.data import tasks

PLUGIN = Path(__file__).parent / "plugins" / "toy.py"


def refused(proc, *needles):
    """One line naming every needle, and exit status 2 (a user error: not retried by the runner)."""
    one_line_error(proc, *needles)
    assert proc.returncode == 2, proc.returncode


EXPERIMENT = ["--model", "toymlp", "--task", "toy", "--num_per_class", "5"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, data_root):
    """Steps 1–4 of toymlp on toy by the runner (--jobs 2, warm tasks), with a copy of the plug-in that a test may
    move away later."""
    out = tmp_path_factory.mktemp("plugin_run")
    plugin = out / "toy_plugin.py"
    shutil.copy(PLUGIN, plugin)
    argv = [sys.executable, "run_experiment.py", "--plugin", str(plugin), *EXPERIMENT, "--seed_ids", "0", "1",
            "--methods", "gd,loo-scratch,toysim", "--jobs", "2", "--threads", "1", "--out_root", str(out)]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BAYESTDA_DATA_ROOT": str(data_root)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 task(s) finished" in proc.stdout and "0 failed" in proc.stdout, proc.stdout
    return out, plugin


def test_a_task_and_family_declared_in_tests_run_through_steps_1_to_4(experiment):
    out, plugin = experiment
    config = torch.load(checkpoint_file(seed_model_dir(out, "toymlp", "toy", 5, 0), 4), weights_only=True)["config"]
    assert config["plugins"] == [str(plugin.resolve())]  # what later steps load
    assert (config["family"], config["task"], config["optimizer"], config["momentum"]) == ("toymlp", "toy", "sgd", 0.9)
    assert (out / "data" / "toy" / "train_subset_5pc.txt").read_text().count("\n") == 15
    for method in ("gd", "loo-scratch", "toysim"):  # toysim: the plug-in's own method, by tda_cnn_scripts/score.py
        record = torch.load(score_file(out, "toymlp", method, "toy", 5, 1), weights_only=True)
        assert record["scores"].shape == (4, 15, 30)  # 4 epochs: every one a posterior sample
        assert record["config"]["plugins"] == [str(plugin.resolve())]
    summary = (out / "results" / "toymlp_toy_5pc" / "summary.csv").read_text()
    assert "gd," in summary and "loo-scratch," in summary and "toysim," in summary
    log = (out / "logs" / "toymlp_toy_5pc" / "gd_seed0.log").read_text()
    assert f"--plugin {plugin.resolve()}" in log  # every task was given it


def test_later_steps_find_the_plugin_without_the_flag(experiment, run_script):
    out, _ = experiment
    proc = run_script("compute_pvalues.py", "--experiment", "toymlp_toy_5pc", "--methods", "gd,loo-scratch,toysim",
                      "--seed_ids", "0", "1", "--out_root", str(out), "--overwrite")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_script("tda_cnn_scripts/gc.py", *EXPERIMENT, "--seed_id", "0", "--out_root", str(out))
    assert proc.returncode == 0, proc.stderr
    assert score_file(out, "toymlp", "gc", "toy", 5, 0).is_file()


def test_a_checkpoint_whose_plugin_is_missing_is_one_line(experiment, run_script, tmp_path):
    out, plugin = experiment
    moved = tmp_path / "elsewhere.py"
    shutil.move(plugin, moved)
    try:
        before = score_file(out, "toymlp", "gd", "toy", 5, 0).stat().st_mtime_ns
        proc = run_script("tda_cnn_scripts/gd.py", *EXPERIMENT, "--seed_id", "0", "--out_root", str(out),
                          "--overwrite")  # fmt: skip
        refused(proc, "was made with plug-in", str(plugin.resolve()), "no such file", "--plugin")
        assert score_file(out, "toymlp", "gd", "toy", 5, 0).stat().st_mtime_ns == before  # nothing half-written
        proc = run_script("tda_cnn_scripts/gd.py", *EXPERIMENT, "--seed_id", "0", "--out_root", str(out),
                          "--plugin", str(moved))  # fmt: skip
        assert proc.returncode == 0, proc.stderr  # the flag supplies it (the score file exists: skipped)
    finally:
        shutil.move(moved, plugin)


@pytest.fixture
def toy_run(tmp_path, run_script):
    """A toy task's subsets in tmp_path; `train(arch, *flags)` trains seed 0 there with the test plug-in."""
    assert run_script("make_subsets.py", "--plugin", str(PLUGIN), "--task", "toy", "--num_per_class", "5",
                      "--out_root", str(tmp_path)).returncode == 0  # fmt: skip

    def train(arch: str, *flags: str):
        proc = run_script("train_cnn.py", "--plugin", str(PLUGIN), "--arch", arch, "--task", "toy",
                          "--num_per_class", "5", "--seed_id", "0", "--out_root", str(tmp_path), *flags)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return tmp_path

    return train


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_plugins_are_one_line_errors(run_script, tmp_path):
    common = ["--task", "toy", "--num_per_class", "5", "--out_root", str(tmp_path)]
    proc = run_script("train_cnn.py", "--plugin", str(tmp_path / "nothere.py"), *common)
    refused(proc, "--plugin", "nothere.py", "no such file")
    proc = run_script("train_cnn.py", "--plugin", "no_such_module_anywhere", *common)
    refused(proc, "--plugin no_such_module_anywhere", "no file or importable module")
    empty = write(tmp_path / "empty.py", "X = 1\n")
    refused(run_script("train_cnn.py", "--plugin", str(empty), *common), "declares no task, model family")
    broken = write(tmp_path / "broken.py", "import torch\n\nraise RuntimeError('my bug')\n")
    refused(run_script("train_cnn.py", "--plugin", str(broken), *common),
                   "failed to import: RuntimeError: my bug (broken.py, line 3)")  # fmt: skip
    twin = write(tmp_path / "twin.py", PLUGIN.read_text())
    proc = run_script("train_cnn.py", "--plugin", str(PLUGIN), "--plugin", str(twin), *common)
    refused(proc, "task 'toy' is declared by plug-in", str(PLUGIN), str(twin), "rename")
    shadow = write(tmp_path / "shadow.py", PLUGIN.read_text().replace('name="toy"', 'name="mnist3"'))
    proc = run_script("train_cnn.py", "--plugin", str(shadow), *common)
    refused(proc, "task 'mnist3' is declared by the package itself and by plug-in")
    assert proc.returncode == 2 and not (tmp_path / "models").exists() and not (tmp_path / "data").exists()


def test_a_recipe_a_replay_cannot_follow_is_refused(toy_run, run_script):
    """Dropout draws random numbers in training that UD and TracIn-ideal cannot replay step by step; a family without
    dropout layers refuses a dropout rate."""
    out = toy_run("toymlp", "--dropout", "0.2")
    flags = [*EXPERIMENT, "--seed_id", "0", "--out_root", str(out)]
    refused(run_script("tda_cnn_scripts/ud.py", *flags), "ud differentiates", "dropout", "use loo-scratch")
    refused(run_script("tda_cnn_scripts/tracin.py", "--kind", "ideal", *flags), "dropout", "tracin-cp")
    refused(run_script("tda_cnn_scripts/loo.py", "--protocol", "scratch", "--stack", "4", *flags),
                   "--stack 4", "cannot be stacked", "dropout")  # fmt: skip
    assert not (out / "tda_scores").exists()
    proc = run_script("train_cnn.py", "--task", "mnist3", "--num_per_class", "10", "--dropout", "0.1",
                      "--out_root", str(out))  # fmt: skip
    refused(proc, "--dropout 0.1", "cnn family", "no dropout layers")
    config = json.loads((seed_model_dir(out, "toymlp", "toy", 5, 0) / "metrics.json").read_text())["config"]
    assert config["dropout"] == 0.2


def test_batchnorm_under_stack_is_refused_and_trains_alone(toy_run, run_script):
    out = toy_run("toybn")
    flags = ["--model", "toybn", "--task", "toy", "--num_per_class", "5", "--seed_id", "0", "--out_root", str(out)]
    proc = run_script("tda_cnn_scripts/loo.py", "--protocol", "scratch", "--stack", "4", *flags)
    refused(proc, "--stack 4", "toybn family's retrains cannot be stacked", "BatchNorm1d", "--stack 1")
    refused(run_script("tda_cnn_scripts/ud.py", *flags), "BatchNorm1d", "batch's own statistics")
    assert not (out / "tda_scores").exists()
    proc = run_script(
        "tda_cnn_scripts/loo.py", "--protocol", "scratch", "--workers", "1", *flags
    )  # auto: one at a time
    assert proc.returncode == 0, proc.stderr
    record = torch.load(score_file(out, "toybn", "loo-scratch", "toy", 5, 0), weights_only=True)
    assert record["config"]["diagnostics"][0]["stack"] == 1
    assert record["config"]["diagnostics"][0]["max_abs_full_retrain_minus_checkpoint_test_loss"] < 1e-5  # the run


def test_an_installed_entry_point_registers_with_the_package(monkeypatch):
    """A package that declares `[project.entry-points."bayestda.plugins"]` is loaded with the package's own
    declarations, and recorded by its module name."""
    from importlib.metadata import EntryPoint

    from conftest import kept_registries

    monkeypatch.syspath_prepend(str(PLUGIN.parent))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "_loaded", {})
    entry = EntryPoint(name="toy", value="toy", group=plugins.GROUP)
    monkeypatch.setattr(
        plugins.importlib.metadata, "entry_points", lambda group: [entry] if group == plugins.GROUP else []
    )
    monkeypatch.delitem(sys.modules, "toy", raising=False)
    with kept_registries():
        plugins.load_entry_points()
        assert tasks.get_task("toy").input_shape == (8,) and tasks.origin("toy") == "toy"
        assert plugins.loaded()["toy"] == ["task toy", "model family toymlp", "model family toybn", "method toysim"]


def test_suggested_commands_carry_the_plugins(toy_run, run_script, tmp_path):
    proc = run_script("train_cnn.py", "--plugin", str(PLUGIN), "--arch", "toymlp", "--task", "toy",
                      "--num_per_class", "7", "--out_root", str(tmp_path))  # fmt: skip
    refused(proc, f"make_subsets.py --task toy --num_per_class 7 --out_root {tmp_path} --plugin {PLUGIN}")


def test_every_backend_passes_the_plugins_to_every_task(tmp_path):
    """The runner gives every task `--plugin`: the local and Ray backends run `Task.command`, Slurm's scripts too."""
    from conftest import kept_registries

    from bayestda.pipeline import slurm
    from bayestda.pipeline.graph import ExperimentSpec, build_graph, pending

    with kept_registries():
        plugins.load(str(PLUGIN))
        spec = ExperimentSpec("toymlp", "toy", 5, ("gd", "toysim"), (0, 1), tmp_path, plugins=(str(PLUGIN),))
        todo = pending(build_graph(spec))
        assert {t.stage for t in todo} == {"subsets", "train", "gd", "toysim", "pvalues", "correlations"}
        for task in todo:
            command = task.command()
            assert command[command.index("--plugin") + 1] == str(PLUGIN), task.name
        written = slurm.write_scripts(todo, spec.name, tmp_path / "logs", tmp_path / "slurm", slurm.SlurmOptions())
    for script in written[:-1]:  # the sbatch scripts; the last is submit.sh
        assert f"--plugin {PLUGIN}" in script.read_text(), script.name
