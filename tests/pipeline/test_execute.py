"""The scheduler on synthetic tasks (tiny `python -c` programs): order, retries, failure reports, slots."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bayestda.core.paths import REPO_ROOT
from bayestda.pipeline.execute import LocalExecutor, execute, placement_env, run_with_retry, write_report
from bayestda.pipeline.graph import Task


def writer(tmp_path, name: str, deps=(), code: str = "") -> Task:
    """A task that checks its dependencies' files exist, then writes its own (plus optional extra code)."""
    checks = "".join(f"assert (out / '{d}').exists(), 'ran before {d}'\n" for d in deps)
    program = (
        f"from pathlib import Path\nout = Path({str(tmp_path)!r})\n{checks}{code}\n(out / '{name}').write_text('ok')\n"
    )
    return Task(name, name, ["-c", program], list(deps))


def run(tasks, tmp_path, jobs=2, cold=False, **kwargs):
    executor = LocalExecutor([], jobs, cores=2, cold=cold)
    assert executor.warm != cold
    try:
        return execute(tasks, executor, tmp_path / "logs", "toy", **kwargs)
    finally:
        executor.close()


def test_dependencies_run_first_and_done_tasks_are_skipped(tmp_path):
    (tmp_path / "a").write_text("from an earlier run")
    tasks = [
        Task("a", "a", ["-c", "raise SystemExit('must not run')"], done=True),
        writer(tmp_path, "b", ["a"]),
        writer(tmp_path, "c", ["a"]),
        writer(tmp_path, "d", ["b", "c"]),
    ]
    report = run(tasks, tmp_path)
    assert report.ok and report.skipped == ["a"] and set(report.finished) == {"b", "c", "d"}
    assert (tmp_path / "a").read_text() == "from an earlier run"
    assert "attempt 1" in (tmp_path / "logs" / "d.log").read_text()


def test_a_flaky_task_is_retried_once(tmp_path):
    flaky = "m = out / 'tried'\nif not m.exists():\n    m.write_text('1')\n    raise RuntimeError('first try fails')"
    report = run([writer(tmp_path, "a", code=flaky), writer(tmp_path, "b", ["a"])], tmp_path)
    assert report.ok and (tmp_path / "b").exists()
    log = (tmp_path / "logs" / "a.log").read_text()
    assert "attempt 1" in log and "RuntimeError: first try fails" in log and "attempt 2" in log


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_failing_task_is_retried_once_then_reported_and_the_run_stops(tmp_path, cold):
    boom = "raise RuntimeError('injected failure')"
    tasks = [
        writer(tmp_path, "ok1"),
        writer(tmp_path, "bad", code=boom),
        writer(tmp_path, "after_bad", ["bad"]),
        writer(tmp_path, "later", ["ok1"]),
    ]
    report = run(tasks, tmp_path, jobs=1, cold=cold)
    log = (tmp_path / "logs" / "bad.log").read_text()
    assert log.count("=== attempt") == 2 and "injected failure" in log
    assert list(report.failed) == ["bad"] and report.failed["bad"]["exit_status"] == 1
    assert "RuntimeError: injected failure" in report.failed["bad"]["tail"][-1]
    assert report.finished.keys() == {"ok1"} and (tmp_path / "ok1").exists()  # finished work is kept
    assert set(report.not_started) == {"after_bad", "later"}  # the run stopped: nothing new started
    text = report.summary()
    assert "FAILED bad" in text and str(tmp_path / "logs" / "bad.log") in text and "not started" in text
    saved = json.loads(write_report(report, tmp_path / "logs").read_text())
    assert saved["failed"]["bad"]["log"].endswith("bad.log") and saved["finished"].keys() == {"ok1"}

    # The next run does only what is missing once the cause is fixed.
    tasks[1] = writer(tmp_path, "bad")
    for t in tasks:
        t.done = (tmp_path / t.name).exists()
    report = run(tasks, tmp_path, jobs=1, cold=cold)
    assert report.ok and report.skipped == ["ok1"] and set(report.finished) == {"bad", "after_bad", "later"}


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_user_error_is_reported_at_once_not_retried(tmp_path, cold):
    """Exit status 2 is a one-line UserError (or a flag error): deterministic, so a retry would only repeat it."""
    user_error = "import sys\nprint('error: bad artifact', file=sys.stderr)\nsys.exit(2)"
    report = run([writer(tmp_path, "bad", code=user_error)], tmp_path, jobs=1, cold=cold)
    log = (tmp_path / "logs" / "bad.log").read_text()
    assert log.count("=== attempt") == 1 and "error: bad artifact" in log
    assert report.failed["bad"]["exit_status"] == 2
    assert run_with_retry(["-c", user_error], {}, str(tmp_path / "slurm.log"), retries=3) == 2
    assert (tmp_path / "slurm.log").read_text().count("=== attempt") == 1  # a Slurm array element stops too


def test_keep_going_runs_what_does_not_depend_on_the_failure(tmp_path):
    tasks = [
        writer(tmp_path, "bad", code="raise SystemExit(3)"),
        writer(tmp_path, "after_bad", ["bad"]),
        writer(tmp_path, "independent"),
    ]
    report = run(tasks, tmp_path, jobs=1, keep_going=True, retries=0)
    assert report.failed["bad"]["exit_status"] == 3 and "attempt 2" not in (tmp_path / "logs" / "bad.log").read_text()
    assert report.finished.keys() == {"independent"} and report.not_started == ["after_bad"]


def test_slots_pin_gpus_and_share_cores():
    gpu = LocalExecutor(["2", "5"], jobs=8, cores=16)
    assert gpu.threads == 8 and len(gpu.free) == 2
    futures = [gpu.submit(Task(n, n, ["-c", "pass"], uses_gpu=True), "/dev/null", 1) for n in "ab"]
    assert not gpu.has_capacity()
    gpu.release(futures[0])
    assert gpu.has_capacity()
    gpu.close()
    cpu = LocalExecutor([], jobs=3, cores=2)
    assert cpu.threads == 1 and len(cpu.free) == 3
    cpu.close()
    capped = LocalExecutor([], jobs=1, cores=16, threads=2)  # --threads: other processes share the machine
    assert capped.threads == 2 and len(capped.free) == 1
    capped.close()
    env = placement_env(4, "5")
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["OMP_NUM_THREADS"] == "4"
    assert placement_env(1, None)["CUDA_VISIBLE_DEVICES"] == ""  # CPU tasks see no GPU


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
@pytest.mark.parametrize("uses_gpu, expected", [(True, "1"), (False, "")])
def test_each_task_sees_only_its_gpu(tmp_path, uses_gpu, expected, cold):
    """Its environment, and (warm starts) torch's thread count although the forked-from process had its own."""
    show = (
        "import os, torch; print('CUDA=' + repr(os.environ['CUDA_VISIBLE_DEVICES']), "
        "'OMP=' + os.environ['OMP_NUM_THREADS'], 'torch=' + str(torch.get_num_threads()))"
    )
    executor = LocalExecutor(["1"], jobs=1, cores=1, cold=cold)  # 1 thread: not torch's default here
    try:
        report = execute([Task("t", "t", ["-c", show], uses_gpu=uses_gpu)], executor, tmp_path, "toy")
    finally:
        executor.close()
    assert report.ok
    assert f"CUDA={expected!r} OMP=1 torch=1" in (tmp_path / "t.log").read_text()


SLEEPER = """
import os, subprocess, sys, time
from pathlib import Path
worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
tmp = Path(OUT) / 'pids.tmp'
tmp.write_text(f'{os.getpid()} {worker.pid}')
tmp.rename(Path(OUT) / 'pids')
time.sleep(120)
"""

RUNNER = """
from pathlib import Path
from bayestda.core.cli import run
from bayestda.pipeline.execute import LocalExecutor, execute
from bayestda.pipeline.graph import Task

def main():
    executor = LocalExecutor([], 1, cores=1, cold=COLD)
    try:
        execute([Task('sleeper', 'sleeper', ['-c', SLEEPER])], executor, Path(OUT) / 'logs', 'toy')
    finally:
        executor.close()

run(main)
"""


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet (a container's init may never reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see which processes are left")
@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_terminated_run_stops_its_tasks_and_their_workers(tmp_path, cold):
    """`kill <runner>` must not leave tasks computing on as orphans (a rerun would duplicate them)."""
    sleeper = f"OUT = {str(tmp_path)!r}\n{SLEEPER}"
    program = f"OUT = {str(tmp_path)!r}\nCOLD = {cold}\nSLEEPER = {sleeper!r}\n{RUNNER}"
    runner = subprocess.Popen([sys.executable, "-c", program], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "pids").exists():
            assert runner.poll() is None, runner.stderr.read()
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.1)
        task, worker = map(int, (tmp_path / "pids").read_text().split())
        assert _alive(task) and _alive(worker)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) == 130
        assert "interrupted; finished work is kept" in runner.stderr.read()
        deadline = time.monotonic() + 10
        while (_alive(task) or _alive(worker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(task) and not _alive(worker)
        assert "=== exit status -15" in (tmp_path / "logs" / "sleeper.log").read_text()
    finally:
        runner.kill()
        for pid in map(int, (tmp_path / "pids").read_text().split()) if (tmp_path / "pids").exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_code_change_during_a_run_switches_to_cold_starts(tmp_path, monkeypatch, capsys):
    """A fork would run the server's old modules beside new files from disk: once the code's stamp changes, tasks
    start in fresh interpreters."""
    from bayestda.pipeline import warm

    code = tmp_path / "code"
    code.mkdir()
    (code / "mod.py").write_text("x = 1\n")
    monkeypatch.setattr(warm, "CODE", [(code, "*.py")])
    executor = LocalExecutor([], 1, cores=1)
    try:
        assert executor.warm
        first = execute([writer(tmp_path, "a")], executor, tmp_path / "logs", "toy")
        assert first.ok and executor.warm and "(warm start)" in (tmp_path / "logs" / "a.log").read_text()
        (code / "new.py").write_text("y = 2\n")
        second = execute([writer(tmp_path, "b")], executor, tmp_path / "logs", "toy")
        assert second.ok and not executor.warm
        assert "(warm start)" not in (tmp_path / "logs" / "b.log").read_text()
        assert "code changed during this run" in capsys.readouterr().err
    finally:
        executor.close()


@pytest.mark.parametrize("code, status", [("pass", 0), ("raise SystemExit(2)", 2), ("raise SystemExit('no')", 1),
                                           ("raise ValueError('x')", 1)])  # fmt: skip
def test_a_warm_task_writes_the_status_it_exits_with(tmp_path, code, status):
    """What the runner falls back on when CPython's forkserver loses a task's status and reports 255."""
    from bayestda.pipeline import execute as ex
    from bayestda.pipeline.warm import start_server, start_warm, status_file

    start_server()
    log = str(tmp_path / "t.log")
    process = start_warm(["-c", code], {}, log, str(tmp_path))
    process.join()
    assert process.exitcode == status and status_file(log).read_text() == str(status)
    with open(log, "a") as f:
        assert ex._own_status(255, status_file(log), f) == status  # the server lost it: the task's own
    assert not status_file(log).exists()
    if status != 255:
        assert "the task itself exited with" in Path(log).read_text()
    status_file(log).write_text("0")
    with open(log, "a") as f:
        assert ex._own_status(-9, status_file(log), f) == -9  # a signal, reported by the server, stands
