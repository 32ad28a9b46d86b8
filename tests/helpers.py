"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def one_line_error(proc, *needles):
    """A step script failed with exactly one line on stderr, which names every needle."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@contextmanager
def kept_fp32_precision():
    """Put torch's float32 precision flags (TF32 or IEEE) back as they were: `resolve_device` sets them."""
    flags = torch.backends, torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul
    saved = [f.fp32_precision for f in flags]
    try:
        yield
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.fp32_precision = value


@contextmanager
def single_thread():
    """One torch thread, as every LOO retrain runs: CPU kernels give other last bits with other thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_model(arch: str, task: str) -> torch.nn.Module:
    """A freshly initialised model of `--arch arch` (from torch's global RNG)."""
    from bayestda.models import families

    return families.of_arch(arch).build({"arch": arch, "task": task})


def init_model(arch: str, task: str, init_seed: int) -> torch.nn.Module:
    """A model's initial weights as training draws them, a function of `init_seed` only."""
    from bayestda.core.seeds import seeded_init

    return seeded_init(init_seed, lambda: build_model(arch, task))


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def features_to_dense(featurizer, feats) -> torch.Tensor:
    """The full flat gradients [N, P] that factored `GradFeatures` stand for, in named_parameters order."""
    blocks, di = {}, 0
    for k in featurizer.dense_names:
        n = featurizer.fm.params[k].numel()
        blocks[k] = feats.dense[:, di : di + n]
        di += n
    modules = dict(featurizer.fm.model.named_modules())
    for name, (d, a) in zip(featurizer.factored, feats.factors, strict=True):
        outer = d[:, :, None] * a[:, None, :]
        has_bias = modules[name].bias is not None
        w = outer[:, :, :-1] if has_bias else outer
        blocks[f"{name}.weight"] = w.reshape(len(d), -1)
        if has_bias:
            blocks[f"{name}.bias"] = outer[:, :, -1]
    return torch.cat([blocks[k] for k in featurizer.fm.params], 1)


SEEDS = list(range(10))  # seeds.txt


def run_config(model="cnn", seed=0, epochs=15, task="mnist3", n=10, **changes) -> dict:
    """A checkpoint config as step 1 records it (the parts score-file checks read)."""
    return {"family": "cnn", "model": model, "arch": "cnn2", "task": task, "num_per_class": n, "seed": seed,
            "posterior": "de", "init_seed": seed, "batch_seed": seed, "epochs": epochs, "lr": 1e-3, **changes}  # fmt: skip


def write_synthetic(
    out_root,
    methods=("loo-paper", "ats", "if-paper", "gd", "gc"),
    seeds=SEEDS,
    n_train=6,
    n_test=4,
    n_ckpts=5,
    rng_seed=0,
    model="cnn",
):
    """Score files whose τ = signal(pair) + seed noise + checkpoint noise, of a 15-epoch run (a one-per-seed
    method, `tracin-*`: one τ per seed, at epoch 15)."""
    from bayestda.artifacts.scores import save_scores
    from bayestda.core.paths import score_file
    from bayestda.methods import registry

    rng = np.random.default_rng(rng_seed)
    train_idx, test_idx = np.arange(100, 100 + n_train), np.arange(7, 7 + n_test) * 3
    signal = rng.normal(size=(n_train, n_test))
    for i, m in enumerate(methods):
        k = 1 if registry.get(m).one_per_seed else n_ckpts
        for s in seeds:
            tau = (i + 1) * signal + rng.normal(size=(n_train, n_test)) + 0.1 * rng.normal(size=(k, n_train, n_test))
            save_scores(score_file(out_root, model, m, "mnist3", 10, s), torch.tensor(tau), train_idx, test_idx,
                        list(range(16 - k, 16)), s, m, {"checkpoint_config": run_config(model, s)},
                        registry.helps_sign(m))  # fmt: skip
    return train_idx, test_idx


def with_last_checkpoint_moved(samples):
    """A copy of a seed's samples whose last checkpoint's first tensor is scaled by 1.01: a run its replay no longer
    reproduces."""
    import dataclasses

    state = dict(samples.checkpoints[-1]["state_dict"])
    name = next(iter(state))
    state[name] = state[name] * 1.01
    return dataclasses.replace(samples, checkpoints=[*samples.checkpoints[:-1],
                                                     {**samples.checkpoints[-1], "state_dict": state}])  # fmt: skip
