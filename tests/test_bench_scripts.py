"""bench/: every benchmark script imports and prints a complete --help (they are not run in CI: they time)."""

import runpy
import sys

import pytest

from bayestda.core.paths import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "bench").glob("bench_*.py"))


def test_bench_folder_is_found():
    assert len(SCRIPTS) >= 6


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--" in out
