"""bayestda.core.cli: every step computes in IEEE float32 unless TF32 is asked for."""

import pytest
import torch
from helpers import kept_fp32_precision

from bayestda.core.cli import ALLOW_TF32_ENV, resolve_device
from bayestda.core.paths import REPO_ROOT


@pytest.fixture
def restore_precision():
    with kept_fp32_precision():
        yield


def test_resolve_device_turns_tf32_off_unless_asked(monkeypatch, restore_precision):
    monkeypatch.delenv(ALLOW_TF32_ENV, raising=False)
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's own default for cuDNN convolutions
    resolve_device("cpu")
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    monkeypatch.setenv(ALLOW_TF32_ENV, "1")
    resolve_device("cpu")
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("tf32", "tf32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_convolutions_match_float64(monkeypatch, restore_precision):
    """On a GPU, a 5x5 convolution over 64 channels is within IEEE float32 error of a float64 CPU reference
    (TF32 would be ~1e-3 off on Ampere and newer)."""
    monkeypatch.delenv(ALLOW_TF32_ENV, raising=False)
    device = resolve_device("cuda")
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 32, 32, generator=gen), torch.randn(64, 64, 5, 5, generator=gen)
    ref = torch.nn.functional.conv2d(x.double(), w.double())
    got = torch.nn.functional.conv2d(x.to(device), w.to(device)).cpu().double()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


SCRIPTS = sorted(
    str(p.relative_to(REPO_ROOT))
    for p in [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("tda_cnn_scripts/*.py"), *REPO_ROOT.glob("tda_vit_scripts/*.py")]
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_help_is_complete_and_shows_only_what_the_script_uses(script_help, script):
    text = script_help(script)
    assert text.startswith("usage:")
    assert "(default: None)" not in text  # a required flag, or one whose help says what is used
    if script.endswith(("gd.py", "gc.py", "ats.py")):  # no Hessian: no flags of the IF solvers
        assert "--hvp_chunk" not in text and "--damping" not in text
    if script.endswith("if.py"):
        assert "--hvp_chunk" in text


def test_a_script_run_in_process_leaves_the_process_as_it_found_it(run_script, tmp_path):
    """The tests' in-process script runner (tests/conftest.py) gives a script's exit status and one-line error as
    a shell would, and puts back what the script changed for the whole process."""
    import os

    from bayestda.core import hints

    env, given, threads = dict(os.environ), dict(hints._given), torch.get_num_threads()
    proc = run_script("train_cnn.py", "--task", "mnist3", "--num_per_class", "10", "--subsets", "paper",
                      "--paper_subsets_dir", str(tmp_path), "--out_root", str(tmp_path),
                      env={"OMP_NUM_THREADS": str(threads + 1)})  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--paper_subsets_dir {tmp_path.resolve()} has no mnist3/ folder" in proc.stderr
    assert dict(os.environ) == env and hints._given == given and torch.get_num_threads() == threads
