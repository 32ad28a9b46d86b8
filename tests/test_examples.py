"""examples/digits.py end to end: the README's "Your own model and data" commands, as written there, at a tiny size
(3 images per class, 2 seeds, 3 epochs, 4 LDS subsets), from training through the methods, steps 3–4,
distributional TDA, LDS and mislabel detection. The fast suite scores one method of each kind (per checkpoint, a
replay, one τ per seed, retrains, an exact inverse); every method (`--methods all`, as the README) is marked slow."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from bayestda.core.paths import REPO_ROOT
from bayestda.methods import registry

SEED_IDS = ["0", "1"]
FEW = "gd,ats,ud,tracin-cp,loo-scratch,if-ggn,lds"  # one of each kind, and what steps 5–7 below read


def readme_commands() -> list[list[str]]:
    """The commands of the README section's first bash block."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Your own model and data") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("python ")]


def tiny(argv: list[str], out, methods: str) -> list[list[str]]:
    """The command at the tiny size, under `out`: one call per seed for the scripts that take --seed_id; the runner
    scores `methods`."""
    script = argv[0]
    argv = [a.replace("_10pc", "_3pc") for a in argv]
    argv = ["3" if i and argv[i - 1] == "--num_per_class" else a for i, a in enumerate(argv)]
    argv += ["--out_root", str(out)]
    if script == "run_experiment.py":
        argv[argv.index("--methods") + 1] = methods
        return [
            [*argv, "--seed_ids", *SEED_IDS, "--epochs", "3", "--lds_subsets", "4", "--jobs", "2", "--threads", "1"]
        ]
    if script in ("train_cnn.py", "self_influence.py"):
        return [[*argv, "--seed_id", k, *(["--epochs", "3"] if script == "train_cnn.py" else [])] for k in SEED_IDS]
    extra = {
        "compute_lds.py": ["--bootstrap", "50", "--num_ckpts", "3"],
        "compute_distributional.py": ["--num_ckpts", "3"],
    }
    return [[*argv, "--seed_ids", *SEED_IDS, *extra.get(script, [])]]


@pytest.mark.parametrize("methods", [FEW, pytest.param("all,lds", marks=pytest.mark.slow)], ids=["few", "all"])
def test_the_readme_runs_the_digits_example_end_to_end(run_script, tmp_path, data_root, methods):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["run_experiment.py", "compute_distributional.py", "compute_lds.py",
                                        "train_cnn.py", "self_influence.py", "compute_mislabel.py"]  # fmt: skip
    assert commands[0][commands[0].index("--methods") + 1] == "all,lds"
    for command in commands:
        for argv in tiny(command, tmp_path, methods):
            if argv[0] == "run_experiment.py":  # as a user runs it: its own interpreter, warm tasks
                env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root)}
                proc = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            else:
                proc = run_script(*argv)
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    results = tmp_path / "results" / "smallmlp_digits_3pc"
    scored = set(registry.score_names()) if methods.startswith("all") else set(methods.split(",")) - {"lds"}
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary.method) == scored  # every method applies to an MLP trained with SGD
    lds = pd.read_csv(results / "lds" / "lds.csv")
    assert set(lds.method) == scored
    assert (results / "distributional" / "scores.csv").is_file()
    auc = pd.read_csv(tmp_path / "results" / "smallmlp-noisy10_digits_3pc" / "mislabel" / "auc.csv")
    assert set(auc.method) == {"gd", "if-ggn", "trak", "loo-scratch"} and auc.auc_mean.between(0, 1).all()
