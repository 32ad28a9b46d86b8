"""finetune_vit.py and tda_vit_scripts/ as a user runs them, on a tiny ViT saved to a temp dir (no downloads).

Fine-tuning and all five methods end to end on MNIST3-10pc (30 training images), then step 3 on the scores.
"""

from __future__ import annotations

import pytest
import torch
from helpers import one_line_error, single_thread

from bayestda.artifacts.checkpoints import load_checkpoint, read_checkpoint, read_metrics
from bayestda.core.paths import REPO_ROOT, checkpoint_file, score_file, seed_model_dir
from bayestda.data.subsets import load_subset, read_indices
from bayestda.models import families
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.training.loop import evaluate
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.recipe import RecipeOptions

COMMON = ["--task", "mnist3", "--num_per_class", "10", "--device", "cpu"]
SCRIPTS = {  # method -> (script, extra flags)
    "gd": ("gd.py", []),
    "gc": ("gc.py", []),
    "ats": ("ats.py", []),
    "if-paper": ("if.py", ["--solver", "paper"]),
    "if-cg": ("if.py", ["--solver", "cg", "--max_iter", "50"]),
    "if-ekfac": ("if.py", ["--solver", "ekfac"]),
    "loo-scratch": ("loo.py", ["--protocol", "scratch", "--workers", "2"]),
}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_vit_dir, data_root):
    """Seeds 0 and 1 fine-tuned in this process for 5 epochs, single-threaded: (out_root, metrics of seed 0)."""
    out = tmp_path_factory.mktemp("vit")
    spec = EnsembleSpec("mnist3", 10, "vit", recipe=RecipeOptions(epochs=5), model_name_or_path=str(tiny_vit_dir))
    with single_thread():
        metrics = train_ensemble(spec, [0, 1], data_root, out, torch.device("cpu"))[0]
    return out, metrics


def test_checkpoints_hold_exactly_the_trainable_tensors_and_reload_exactly(finetuned, data_root):
    out, metrics = finetuned
    seed_dir = seed_model_dir(out, "vit", "mnist3", 10, 0)
    config = metrics["config"]
    assert config["family"] == "vit" and config["lora"] == {
        "r": 16,
        "alpha": 16,
        "dropout": 0.1,
        "targets": ["query", "value"],
    }
    assert sorted(p.name for p in seed_dir.iterdir()) == [f"ckpt_epoch_{e}.pt" for e in range(1, 6)] + ["metrics.json"]
    model = families.init(config)
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert all("lora_" in k or "classifier.modules_to_save" in k for k in trainable)
    state = read_checkpoint(checkpoint_file(seed_dir, 5))["state_dict"]
    assert state.keys() == trainable
    # the reloaded model gives the test loss that training measured on the live model, to the bit
    reloaded, cfg = load_checkpoint(checkpoint_file(seed_dir, 5))
    test = load_subset("mnist3", "test", None, data_root, REPO_ROOT, pixels=True)
    with single_thread():
        assert evaluate(reloaded, test, CROSS_ENTROPY)[0].mean().item() == metrics["epochs"][-1]["test_loss"]
    assert cfg == {**config, "epoch": 5}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_float32_weights(precision, finetuned, tiny_vit_dir, data_root, tmp_path):
    """The autocast path (GPU in practice; CPU runs it too): it trains, and checkpoints and scores stay float32."""
    spec = EnsembleSpec(
        "mnist3", 10, "vit", recipe=RecipeOptions(epochs=5), model_name_or_path=str(tiny_vit_dir), precision=precision
    )
    metrics = train_ensemble(spec, [0], data_root, tmp_path, torch.device("cpu"))[0]
    assert metrics["config"]["precision"] == precision
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in metrics["epochs"])
    state = read_checkpoint(checkpoint_file(seed_model_dir(tmp_path, "vit", "mnist3", 10, 0), 5))["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values())
    fp32 = read_checkpoint(checkpoint_file(seed_model_dir(finetuned[0], "vit", "mnist3", 10, 0), 5))["state_dict"]
    assert any(not torch.equal(v, fp32[k]) for k, v in state.items())  # autocast did change the arithmetic


def test_finetuning_is_deterministic_and_resumable(finetuned, tiny_vit_dir, data_root, tmp_path):
    out, _ = finetuned
    spec = EnsembleSpec("mnist3", 10, "vit", recipe=RecipeOptions(epochs=5), model_name_or_path=str(tiny_vit_dir))
    assert train_ensemble(spec, [0], data_root, out, torch.device("cpu")) == {0: None}  # finished: skipped
    with single_thread():
        train_ensemble(spec, [0], data_root, tmp_path, torch.device("cpu"))
    for e in (1, 5):
        a = read_checkpoint(checkpoint_file(seed_model_dir(out, "vit", "mnist3", 10, 0), e))["state_dict"]
        b = read_checkpoint(checkpoint_file(seed_model_dir(tmp_path, "vit", "mnist3", 10, 0), e))["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_tracin_replays_the_fine_tuning_exactly(finetuned, data_root):
    """TracIn's replay repeats fine-tuning bit for bit (crops, dropout, linear lr decay; single-threaded, as it was
    trained), and its per-epoch learning rates are the decayed ones; the per-step kind refuses the ViT."""
    import dataclasses
    import itertools

    from bayestda.core.errors import UserError
    from bayestda.data.subsets import Subset
    from bayestda.methods import tracin
    from bayestda.runs.samples import load_seed_samples

    samples = load_seed_samples("vit", "mnist3", 10, 0, finetuned[0], data_root)
    test = samples.test
    samples = dataclasses.replace(samples, test=Subset(test.x[:20], test.y[:20], test.idx[:20]))
    with single_thread():
        scores, (diagnostics,) = tracin.score(samples, tracin.TracInOptions(chunk=8), torch.device("cpu"))
    assert diagnostics["max_rel_weight_diff"] == 0.0
    assert sorted(diagnostics["rel_weight_diff_by_epoch"]) == [1, 2, 3, 4, 5]
    lrs = diagnostics["epoch_lrs"]
    assert len(lrs) == 5 and all(a > b > 0 for a, b in itertools.pairwise(lrs))  # linear decay, per step
    assert scores.shape == (1, 30, 20) and torch.isfinite(scores).all() and scores.abs().sum() > 0
    with pytest.raises(UserError, match="tracin-ideal needs each step's gradients as the model took them"):
        tracin.score(samples, tracin.TracInOptions(kind="ideal", chunk=8), torch.device("cpu"))


SLOW = {"gc", "ats", "if-paper", "if-cg", "if-ekfac", "loo-scratch"}  # same contract, more minutes: in `make test-all`


@pytest.fixture(scope="module")
def scored(finetuned, run_script):
    """score(method): seed 0 scored by the method's script, once per module -> (out_root, stdout)."""
    out, _ = finetuned
    logs = {}

    def score(method):
        if method not in logs:
            script, extra = SCRIPTS[method]
            proc = run_script(f"tda_vit_scripts/{script}", *COMMON, *extra, "--seed_id", "0", "--out_root", str(out))
            assert proc.returncode == 0, proc.stderr
            logs[method] = proc.stdout
        return out, logs[method]

    return score


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in SCRIPTS])
def test_vit_scores_follow_the_contract(scored, method):
    out, log = scored(method)
    assert "written" in log
    record = torch.load(score_file(out, "vit", method, "mnist3", 10, 0), weights_only=True)
    assert record["scores"].dtype == torch.float32 and record["scores"].shape == (5, 30, 900)
    assert record["ckpt_epochs"] == [1, 2, 3, 4, 5] and record["seed"] == 0 and record["method"] == method
    assert record["train_idx"].tolist() == read_indices(REPO_ROOT / "data/mnist3/train_subset_10pc.txt").tolist()
    assert record["config"]["checkpoint_config"]["family"] == "vit"
    assert torch.isfinite(record["scores"]).all() and record["scores"].abs().sum() > 0
    if method == "if-paper":  # the original ViT code's LiSSA batch size
        assert record["config"]["options"]["lissa_batch_size"] == 32
    if method == "loo-scratch":  # retraining from the seed's init repeats fine-tuning exactly (crops, dropout, lr)
        assert record["config"]["diagnostics"][0]["max_abs_full_retrain_minus_checkpoint_test_loss"] == 0.0


def test_gd_script_equals_the_library_on_the_reloaded_checkpoint(scored, data_root):
    """The script's scores are the library's on `load_checkpoint`'s model (a cross-check of the plumbing)."""
    from bayestda.methods.grad_similarity import grad_dot_and_cos
    from bayestda.models.func import FunctionalModel

    out, _ = scored("gd")
    model, _ = load_checkpoint(checkpoint_file(seed_model_dir(out, "vit", "mnist3", 10, 0), 3))
    train = load_subset("mnist3", "train", 10, data_root, REPO_ROOT, pixels=True)
    test = load_subset("mnist3", "test", None, data_root, REPO_ROOT, pixels=True)
    gd, _ = grad_dot_and_cos(FunctionalModel(model), train, type(test)(test.x[:50], test.y[:50], test.idx[:50]))
    record = torch.load(score_file(out, "vit", "gd", "mnist3", 10, 0), weights_only=True)
    torch.testing.assert_close(record["scores"][2, :, :50], gd, rtol=1e-4, atol=1e-6)


def test_pvalues_run_on_vit_scores(scored, run_script):
    out, _ = scored("gd")
    proc = run_script("tda_vit_scripts/gd.py", *COMMON, "--seed_id", "1", "--out_root", str(out))  # σ needs 2 seeds
    assert proc.returncode == 0, proc.stderr
    proc = run_script("compute_pvalues.py", "--experiment", "vit_mnist3_10pc", "--methods", "gd",
                      "--seed_ids", "0", "1", "--out_root", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "results" / "vit_mnist3_10pc" / "summary.csv").is_file()


def test_vit_errors_are_one_line(finetuned, run_script, tiny_vit_dir, tmp_path):
    out, _ = finetuned
    proc = run_script("finetune_vit.py", *COMMON, "--model_name_or_path", str(tmp_path), "--out_root", str(tmp_path))
    one_line_error(proc, "has no config.json")
    proc = run_script("tda_vit_scripts/gd.py", *COMMON, "--seed_id", "4", "--out_root", str(out))
    one_line_error(proc, "no finished training run; make it with: python finetune_vit.py --task mnist3")
    # a checkpoint trained with another LoRA rank does not load into this configuration
    seed_dir = seed_model_dir(out, "vit", "mnist3", 10, 0)
    metrics = read_metrics(seed_dir)
    bad = {**metrics["config"], "lora": {**metrics["config"]["lora"], "r": 8}}
    with pytest.raises(Exception, match="does not match this LoRA configuration"):
        families.from_state(bad, read_checkpoint(checkpoint_file(seed_dir, 5))["state_dict"])


@pytest.mark.parametrize(
    "script", ["finetune_vit.py", *(f"tda_vit_scripts/{s}.py" for s in ("gd", "gc", "ats", "if", "loo"))]
)
def test_help(script_help, script):
    assert "--seed_id" in script_help(script)


def test_ud_refuses_the_vit_in_one_line(finetuned, run_script):
    out, _ = finetuned
    proc = run_script("tda_vit_scripts/ud.py", *COMMON, "--seed_id", "0", "--out_root", str(out))
    one_line_error(proc, "dropout or random augmentation", "use loo-scratch")
    assert not score_file(out, "vit", "ud", "mnist3", 10, 0).exists()
