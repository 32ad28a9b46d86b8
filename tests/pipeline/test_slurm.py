"""Slurm wiring without a cluster: the sbatch scripts for a fresh experiment, and submitit's calls (a fake module)."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

from bayestda.pipeline import slurm
from bayestda.pipeline.execute import run_with_retry
from bayestda.pipeline.graph import ExperimentSpec, build_graph, pending


def fresh(tmp_path, methods=("loo-paper", "gd")):
    return pending(build_graph(ExperimentSpec("cnn", "mnist3", 20, methods, (0, 3), tmp_path)))


def test_scripts_for_a_fresh_experiment(tmp_path):
    opts = slurm.SlurmOptions(partition="gpu", time_min=30, cpus_per_task=6, extra=("--account=lab",))
    paths = slurm.write_scripts(fresh(tmp_path), "cnn_mnist3_20pc", tmp_path / "logs", tmp_path / "s", opts)
    assert [p.name for p in paths] == [
        "01_train.sbatch", "02_loo-paper.sbatch", "03_gd.sbatch", "04_pvalues.sbatch", "05_correlations.sbatch",
        "submit.sh",
    ]  # fmt: skip
    loo = paths[1].read_text()
    for line in ["#SBATCH --array=0,3", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --account=lab", "for attempt in $(seq 1 2)"]:  # fmt: skip
        assert line in loo, line
    assert '--seed_id "$SLURM_ARRAY_TASK_ID" --workers 6' in loo
    assert f'log="{tmp_path}/logs/loo-paper_seed${{SLURM_ARRAY_TASK_ID}}.log"' in loo
    pvalues = paths[3].read_text()
    assert "--array" not in pvalues and "--gres" not in pvalues and "export CUDA_VISIBLE_DEVICES=\n" in pvalues
    submit = paths[-1].read_text()
    assert "jid_train=$(sbatch --parsable 01_train.sbatch)" in submit
    assert "jid_loo_paper=$(sbatch --parsable --dependency=afterok:$jid_train 02_loo-paper.sbatch)" in submit
    assert "--dependency=afterok:$jid_loo_paper:$jid_gd:$jid_pvalues 05_correlations.sbatch" in submit


class FakeExecutor:
    calls: ClassVar[list] = []

    def __init__(self, folder):
        self.params = {}

    def update_parameters(self, **params):
        self.params.update(params)

    def map_array(self, fn, *args):
        FakeExecutor.calls.append((fn, self.params, args))
        job_id = 100 + len(FakeExecutor.calls)
        return [types.SimpleNamespace(job_id=f"{job_id}_{i}") for i in range(len(args[0]))]


def test_submitit_submits_one_array_per_stage_with_afterok(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    FakeExecutor.calls = []
    ids = slurm.submit(fresh(tmp_path), "cnn_mnist3_20pc", tmp_path, slurm.SlurmOptions(cpus_per_task=2))
    assert ids == {"train": "101", "loo-paper": "102", "gd": "103", "pvalues": "104", "correlations": "105"}
    fn, params, (argvs, envs, logs, retries) = FakeExecutor.calls[1]
    assert fn is run_with_retry and retries == [1, 1]
    assert params["slurm_additional_parameters"] == {"dependency": "afterok:101"}
    assert params["slurm_gres"] == "gpu:1" and "CUDA_VISIBLE_DEVICES" not in envs[0]
    assert [a[-4:] for a in argvs] == [["--seed_id", "0", "--workers", "2"], ["--seed_id", "3", "--workers", "2"]]
    assert logs == [str(tmp_path / "loo-paper_seed0.log"), str(tmp_path / "loo-paper_seed3.log")]
    _, params, (argvs, envs, _, _) = FakeExecutor.calls[3]
    assert params["slurm_additional_parameters"] == {"dependency": "afterok:102:103"}
    assert "slurm_gres" not in params and envs[0]["CUDA_VISIBLE_DEVICES"] == ""
    assert argvs[0][0] == "compute_pvalues.py"


def test_run_with_retry_tries_twice(tmp_path):
    log = tmp_path / "t.log"
    assert run_with_retry(["-c", "raise SystemExit(4)"], {}, str(log)) == 4
    assert log.read_text().count("=== attempt") == 2
