"""Nothing orphaned: children end with a parent killed by SIGKILL, and stale temp files are cleaned without
touching a live writer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bayestda.core import io
from bayestda.core.paths import REPO_ROOT


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            table[int(d.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _proc_table(), set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, (pp, _) in table.items() if pp == parent} - found
        found |= kids
        todo += kids
    return found


def _alive(pids) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] not in ("Z", "X")}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")

LOO = ["--task", "mnist3", "--num_per_class", "50", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_50pc(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("lifeline")
    env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train_cnn.py"), *LOO, "--epochs", "6", "--seed_id", "0",
                           "--out_root", str(out)], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, env


RUN = ["run_experiment.py", *LOO[:-2], "--methods", "loo-scratch", "--seed_ids", "0", "--epochs", "6", "--jobs", "1"]
PARENTS = {
    "loo step": ["tda_cnn_scripts/loo.py", *LOO, "--protocol", "scratch", "--workers", "2", "--seed_id", "0"],
    "runner (warm tasks)": RUN,
    "runner (fresh interpreters)": [*RUN, "--cold_start"],
}


@needs_proc
@pytest.mark.parametrize("parent", list(PARENTS))
def test_sigkill_of_a_parent_leaves_no_child_running(trained_50pc, parent):
    out, env = trained_50pc
    argv = PARENTS[parent]
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / argv[0]), *argv[1:], "--out_root", str(out)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline, tree = time.monotonic() + 300, set()
        while time.monotonic() < deadline:  # until LOO's worker processes are up
            tree |= _descendants(proc.pid)
            if any("spawn_main" in _cmdline(p) for p in _alive(tree)):
                break
            assert proc.poll() is None, "the parent ended before its workers started"
            time.sleep(0.1)
        else:
            pytest.fail("no LOO worker process appeared")
        time.sleep(0.5)
        tree |= _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(tree)
        assert not left, [(p, _proc_table().get(p), _cmdline(p)[:150]) for p in left]
    finally:
        proc.kill()
        for p in _alive(tree if "tree" in locals() else set()):
            os.kill(p, signal.SIGKILL)


# ----------------------------------------------------------------------------- temp files


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    host = io._HOST
    stale = tmp_path / f".ckpt_epoch_3.pt.{host}~{_dead_pid()}.x1.tmp"
    live = tmp_path / f".ckpt_epoch_4.pt.{host}~{os.getpid()}.x2.tmp"
    other_old = tmp_path / ".metrics.json.otherhost~123.x3.tmp"
    other_new = tmp_path / ".metrics.json.otherhost~124.x4.tmp"
    foreign = tmp_path / ".editor-swap.tmp"  # not written by this package
    for f in (stale, live, other_old, other_new, foreign):
        f.write_text("partial")
    old = time.time() - io.OTHER_HOST_STALE_S - 60
    os.utime(other_old, (old, old))
    assert sorted(io.remove_stale_temp_files(tmp_path)) == sorted([stale, other_old])
    assert {p.name for p in tmp_path.iterdir()} == {live.name, other_new.name, foreign.name}


def test_a_writing_process_s_own_temp_file_is_not_stale(tmp_path):
    seen = {}

    def write(f):
        f.write(b"data")
        (tmp,) = list(tmp_path.glob(".*.tmp"))
        seen["removed"] = io.remove_stale_temp_files(tmp_path, recursive=True)
        seen["still there"] = tmp.exists()

    io.atomic_write(tmp_path / "out.bin", write)
    assert seen == {"removed": [], "still there": True}
    assert (tmp_path / "out.bin").read_bytes() == b"data"


def test_a_killed_writer_s_temp_file_is_cleaned_on_the_next_run(tmp_path):
    script = (
        "import os, sys, time\n"
        "from bayestda.core import io\n"
        "def write(f):\n"
        "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "io.atomic_write(sys.argv[1], write)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "x.pt")], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    (tmp,) = list(tmp_path.glob(".*.tmp"))
    assert io.remove_stale_temp_files(tmp_path) == []  # its writer is alive
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert tmp.exists() and io.remove_stale_temp_files(tmp_path) == [tmp] and not tmp.exists()
