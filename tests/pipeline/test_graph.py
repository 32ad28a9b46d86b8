"""The task graph: exactly the expected tasks, and only the missing ones once some outputs exist."""

from __future__ import annotations

import json
import os

import pytest

from bayestda.core.errors import UserError
from bayestda.core.paths import checkpoint_file, metrics_file, results_dir, score_file, seed_model_dir
from bayestda.pipeline.graph import ExperimentSpec, build_graph, kept_methods, pending, resolve_methods

METHODS = ("loo-paper", "ats", "if-paper", "gd", "gc")


def spec(tmp_path, seed_ids=(0, 1, 2), methods=METHODS, **kw) -> ExperimentSpec:
    return ExperimentSpec("cnn", "mnist3", 10, methods, seed_ids, tmp_path, **kw)


def names(tasks) -> set[str]:
    return {t.name for t in tasks}


def fake_trained(out, seed, epochs=15):
    seed_dir = seed_model_dir(out, "cnn", "mnist3", 10, seed)
    seed_dir.mkdir(parents=True)
    for e in range(epochs - 4, epochs + 1):
        checkpoint_file(seed_dir, e).write_bytes(b"")
    metrics_file(seed_dir).write_text(json.dumps({"config": {"epochs": epochs}}))


def fake_scores(out, method, seed):
    path = score_file(out, "cnn", method, "mnist3", 10, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_fresh_experiment_lists_every_task_in_dependency_order(tmp_path):
    tasks = build_graph(spec(tmp_path))
    per_seed = {f"{stage}_seed{k}" for stage in ("train", *METHODS) for k in (0, 1, 2)}
    assert names(tasks) == {"subsets", *per_seed, "pvalues", "correlations"}
    # The subset files are committed, so that task is done; everything else is to run.
    assert names(pending(tasks)) == {*per_seed, "pvalues", "correlations"}
    position = {t.name: i for i, t in enumerate(tasks)}
    assert all(position[d] < position[t.name] for t in tasks for d in t.deps)
    by_name = {t.name: t for t in tasks}
    assert by_name["gd_seed1"].deps == ["train_seed1"]
    assert set(by_name["pvalues"].deps) == {f"{m}_seed{k}" for m in METHODS for k in (0, 1, 2)}
    loo = by_name["loo-paper_seed2"].command(threads=3)
    assert loo[:2] == ["tda_cnn_scripts/loo.py", "--model"] and loo[-4:] == ["--seed_id", "2", "--workers", "3"]
    assert "--protocol" in loo and loo[loo.index("--protocol") + 1] == "paper"
    assert by_name["pvalues"].argv[-2:] == ["--out_root", str(tmp_path)]
    assert "--seed_ids" in by_name["pvalues"].argv  # 3 of the 10 seeds: the statistics get told which


def test_existing_outputs_are_not_listed(tmp_path):
    fake_trained(tmp_path, seed=0)
    fake_trained(tmp_path, seed=1)
    for method in METHODS:
        fake_scores(tmp_path, method, 0)
    fake_scores(tmp_path, "gd", 1)
    todo = names(pending(build_graph(spec(tmp_path))))
    assert todo == {"train_seed2", *(f"{m}_seed{k}" for m in METHODS for k in (1, 2) if (m, k) != ("gd", 1))} | {
        "pvalues",
        "correlations",
    }


def write_manifest(tmp_path, name, methods, seeds):
    path = results_dir(tmp_path, "cnn", "mnist3", 10) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"inputs": {"methods": list(methods), "seeds": seeds}}))
    return path


def test_statistics_are_done_only_for_the_same_methods_seeds_and_newer_scores(tmp_path):
    s = spec(tmp_path, seed_ids=(0, 1), methods=("gd", "gc"))
    for k in (0, 1):
        fake_trained(tmp_path, k)
        for m in s.methods:
            fake_scores(tmp_path, m, k)
    pv = write_manifest(tmp_path, "pvalues_manifest.json", s.methods, [0, 1])
    write_manifest(tmp_path, "correlations_manifest.json", ("gd",), [0, 1])  # other methods: redo
    assert names(pending(build_graph(s))) == {"correlations"}

    # A score file rewritten after the p-values makes them stale.
    newer = score_file(tmp_path, "cnn", "gc", "mnist3", 10, 1)
    os.utime(newer, (pv.stat().st_mtime + 10, pv.stat().st_mtime + 10))
    assert names(pending(build_graph(s))) == {"pvalues", "correlations"}

    # A missing score file makes its task and both statistics pending.
    newer.unlink()
    os.utime(pv, (pv.stat().st_mtime + 20, pv.stat().st_mtime + 20))
    assert names(pending(build_graph(s))) == {"gc_seed1", "pvalues", "correlations"}


def test_a_runner_that_adds_methods_keeps_those_already_in_the_statistics(tmp_path):
    """Steps 3–4 refuse to drop a method from their results, so the runner passes the ones they hold (with
    every score file still there, on the same seeds) before its own; not with --overwrite."""
    for k in (0, 1):
        fake_trained(tmp_path, k)
        for m in ("gd", "gc", "ats"):
            fake_scores(tmp_path, m, k)
    write_manifest(tmp_path, "pvalues_manifest.json", ("gd", "gc", "if-paper"), [0, 1])  # if-paper: no score files
    s = spec(tmp_path, seed_ids=(0, 1), methods=("ats",))
    assert kept_methods(s) == ["gd", "gc"]
    by_name = {t.name: t for t in build_graph(s)}
    for stage in ("pvalues", "correlations"):
        argv = by_name[stage].argv
        assert argv[argv.index("--methods") + 1] == "gd,gc,ats"
    assert names(pending(build_graph(s))) == {"pvalues", "correlations"}
    pv = write_manifest(tmp_path, "pvalues_manifest.json", ("gd", "gc", "ats"), [0, 1])
    write_manifest(tmp_path, "correlations_manifest.json", ("gd", "gc", "ats"), [0, 1])
    assert names(pending(build_graph(s))) == set()  # done, with the kept methods' score files older than it
    os.utime(score_file(tmp_path, "cnn", "gd", "mnist3", 10, 0), (pv.stat().st_mtime + 10,) * 2)
    assert names(pending(build_graph(s))) == {"pvalues", "correlations"}  # a kept method's newer scores count

    assert kept_methods(spec(tmp_path, seed_ids=(0,), methods=("ats",))) == []  # other seeds: step 3 decides
    assert kept_methods(spec(tmp_path, seed_ids=(0, 1), methods=("ats",), overwrite=True)) == []
    assert kept_methods(spec(tmp_path, seed_ids=(0, 1), methods=("gd", "gc", "ats"))) == []


def test_overwrite_lists_everything_but_the_committed_subsets(tmp_path):
    fake_trained(tmp_path, 0)
    tasks = build_graph(spec(tmp_path, seed_ids=(0,), methods=("gd",), overwrite=True))
    assert names(pending(tasks)) == {"train_seed0", "gd_seed0", "pvalues", "correlations"}
    assert all("--overwrite" in t.argv for t in tasks if t.name != "subsets")


def test_methods_and_models_are_checked():
    assert resolve_methods(["loo", "if", "gd", "loo-scratch"], {"protocol": "paper", "solver": "cg"}) == (
        "loo-paper",
        "if-cg",
        "gd",
        "loo-scratch",
    )
    assert resolve_methods(["tracin"]) == ("tracin-cp",)  # a method's name alone: its default variant
    with pytest.raises(UserError, match="unknown method 'datamodels'"):
        resolve_methods(["datamodels"])
    with pytest.raises(UserError, match="unknown method 'loo-lissa'"):
        resolve_methods(["loo"], {"protocol": "lissa"})
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        build_graph(ExperimentSpec("resnet", "mnist3", 10, ("gd",), (0,), None))


def test_vit_experiment_runs_the_vit_steps(tmp_path):
    flags = ("--model_name_or_path", "/models/vit-in21k", "--precision", "bf16")
    tasks = {
        t.name: t for t in build_graph(ExperimentSpec("vit", "mnist3", 10, METHODS, (0,), tmp_path, train_flags=flags))
    }
    train = tasks["train_seed0"].command()
    assert train[0] == "finetune_vit.py" and train[train.index("--model_name_or_path") + 1] == "/models/vit-in21k"
    assert train[train.index("--precision") + 1] == "bf16"
    assert tasks["if-paper_seed0"].command()[:3] == ["tda_vit_scripts/if.py", "--model", "vit"]
    assert tasks["loo-paper_seed0"].command(threads=2)[-2:] == ["--workers", "2"]


def test_lds_retrains_are_per_seed_tasks_done_only_for_the_same_subsets(tmp_path):
    import torch

    from bayestda.core.paths import subset_retrain_file
    from bayestda.runs.subset_retrains import SubsetRetrainOptions

    opts = SubsetRetrainOptions(lds_subsets=20)
    tasks = build_graph(spec(tmp_path, methods=("gd",), lds=opts))
    lds = [t for t in tasks if t.stage == "lds"]
    assert [t.name for t in lds] == ["lds_seed0", "lds_seed1", "lds_seed2"]
    assert lds[0].deps == ["train_seed0"] and lds[0].takes_workers and "--lds_subsets" in lds[0].argv
    assert lds[0].command(threads=2)[:1] == ["retrain_subsets.py"] and "--workers" in lds[0].command(threads=2)
    assert not any(d.startswith("lds") for t in tasks if t.stage in ("pvalues", "correlations") for d in t.deps)
    path = subset_retrain_file(tmp_path, "cnn", "mnist3", 10, 0)
    path.parent.mkdir(parents=True)
    torch.save({"config": {"subsets": opts.subset_config()}}, path)
    assert "lds_seed0" not in names(pending(build_graph(spec(tmp_path, methods=("gd",), lds=opts))))
    other = SubsetRetrainOptions(lds_subsets=30)  # other subsets: the task runs, and its step refuses in one line
    assert "lds_seed0" in names(pending(build_graph(spec(tmp_path, methods=("gd",), lds=other))))
    only = build_graph(spec(tmp_path, methods=(), lds=opts))  # LDS retrains alone: no steps 3–4
    assert {t.stage for t in only} == {"subsets", "train", "lds"}
