"""Run a task graph: a scheduler that starts tasks whose dependencies are met, retries a failure once, and
reports what finished, what failed and where its log is. A task that failed on a user error (exit status 2: bad
flags or a bad artifact, said in one line) is not retried: it would fail the same way again.

The scheduler is the same for every backend. A backend only places one task: `LocalExecutor` on a pool of
slots on this machine (one per GPU, or `--jobs` CPU slots), `RayExecutor` as a Ray task with its resources.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..core.cli import USER_ERROR_EXIT, available_cores
from ..core.errors import UserError
from ..core.io import atomic_write_json
from ..core.lifeline import PARENT_PID_ENV
from ..core.paths import REPO_ROOT
from .graph import Task, pending
from .warm import available as warm_available
from .warm import code_stamp, start_server, start_warm, status_file

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def placement_env(threads: int, gpu: str | None) -> dict[str, str]:
    """Environment of one task: its thread budget, and the one GPU it sees ('' hides every GPU)."""
    return {**dict.fromkeys(THREAD_VARS, str(threads)), "CUDA_VISIBLE_DEVICES": gpu or "", "PYTHONUNBUFFERED": "1"}


class LiveTasks:
    """The task processes running now, each the leader of its own process group (with any workers it started).

    A run that is interrupted (Ctrl-C, or SIGTERM, which `cli.run` turns into the same) stops them, instead of
    leaving them to compute on as orphans that a rerun would then duplicate.
    """

    def __init__(self):
        self._pids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def _running(self) -> list[int]:
        with self._lock:
            return list(self._pids)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM each task (a step exits as on Ctrl-C: its worker pool shuts down, temp files go), wait up to
        grace_s for them to end, then SIGKILL each task's whole process group: whatever it left or still runs."""
        leaders = self._running()
        for pid in leaders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self._running() and time.monotonic() < deadline:  # `run_logged` discards a pid once it has ended
            time.sleep(0.05)
        still_running = set(self._running())
        for pid in leaders:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # the group is empty, or the task had not yet made its own
                if pid in still_running:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


LIVE_TASKS = LiveTasks()


def run_logged(
    argv: list[str], env: dict[str, str], log: str, attempt: int, cwd: str = str(REPO_ROOT), warm: bool = False
) -> int:
    """Run a step script with `python`, appending its output to `log`; returns the exit status.

    `warm`: fork it from a server that has already imported torch (`warm.py`) instead of starting a fresh
    interpreter. Module-level so that Ray and submitit can ship it to other processes and nodes.
    """
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *argv]
    with log_path.open("a") as f:
        f.write(f"\n=== attempt {attempt}: {' '.join(command)}{' (warm start)' if warm else ''}\n=== env: {env}\n")
        f.flush()
        start = time.perf_counter()
        if warm:
            status_file(str(log_path)).unlink(missing_ok=True)
            process = start_warm(argv, env, str(log_path), cwd)
            wait_for = process.join
        else:  # process_group=0: the task leads its own group, as a warm one does
            env = {**os.environ, **env, PARENT_PID_ENV: str(os.getpid())}  # it ends if this process is killed
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, process_group=0)
            wait_for = process.wait
        LIVE_TASKS.add(process.pid)
        try:
            wait_for()
        finally:
            LIVE_TASKS.discard(process.pid)
        if warm:
            rc = _own_status(process.exitcode, status_file(str(log_path)), f)
            if rc != 0 and log_path.stat().st_size == f.tell():  # nothing of its own in the log
                f.write("=== it failed before its script started; the traceback is in the runner's output\n")
        else:
            rc = process.returncode
        f.write(f"=== exit status {rc} after {time.perf_counter() - start:.1f} s\n")
    return rc


def _own_status(rc: int, status: Path, log) -> int:
    """A warm task's exit status: the server's report, unless that is 255 (CPython's forkserver lost the status,
    `warm.py`) and the task wrote its own."""
    own = status.read_text().strip() if status.is_file() else ""
    status.unlink(missing_ok=True)
    if rc == 255 and own.lstrip("-").isdigit() and int(own) != 255:
        log.write(f"=== the warm-start server reported 255 (a CPython forkserver bug under load); the task itself "
                  f"exited with {own}\n")  # fmt: skip
        return int(own)
    return rc


def run_with_retry(argv: list[str], env: dict[str, str], log: str, retries: int = 1) -> int:
    """One task with its retries in one process: what a Slurm array element runs."""
    for attempt in range(1, retries + 2):
        rc = run_logged(argv, env, log, attempt)
        if rc in (0, USER_ERROR_EXIT):
            break
    return rc


class LocalExecutor:
    """A pool of slots on this machine. With GPUs each slot owns one GPU; without, `jobs` CPU slots.

    The CPU cores are shared out evenly, so `jobs` tasks never oversubscribe the machine; `threads` replaces that
    share when other work runs on the machine too.
    Tasks start warm (forked from a process that has imported torch) unless `cold` or the platform lacks fork.
    """

    def __init__(
        self, gpus: list[str], jobs: int, cores: int | None = None, cold: bool = False, threads: int | None = None
    ):
        cores = cores or available_cores()
        self.warm = not cold and warm_available()
        if self.warm:
            start_server()
            self.stamp = code_stamp()
        self.gpus = gpus
        n_slots = len(gpus) if gpus else jobs
        self.threads = threads or max(1, cores // n_slots)
        self.free = list(range(n_slots))
        self.slot_of: dict[Future, int] = {}
        self.pool = ThreadPoolExecutor(n_slots, thread_name_prefix="task")

    def describe(self) -> str:
        where = f"GPUs {','.join(self.gpus)} (one task each)" if self.gpus else f"{len(self.free)} CPU jobs"
        return f"local: {where}, {self.threads} thread(s) per task, {'warm' if self.warm else 'cold'} starts"

    def has_capacity(self) -> bool:
        return bool(self.free)

    def submit(self, task: Task, log: Path, attempt: int) -> Future:
        if self.warm and code_stamp() != self.stamp:  # a fork would mix the server's code with the new files
            self.warm = False
            print("the package's code changed during this run: the remaining tasks start cold, in fresh "
                  "interpreters", file=sys.stderr, flush=True)  # fmt: skip
        slot = self.free.pop(0)
        gpu = self.gpus[slot] if self.gpus and task.uses_gpu else None
        env = placement_env(self.threads, gpu)
        future = self.pool.submit(run_logged, task.command(self.threads), env, str(log), attempt, warm=self.warm)
        self.slot_of[future] = slot
        return future

    def release(self, future: Future) -> None:
        self.free.append(self.slot_of.pop(future))

    def close(self, cancel: bool = False) -> None:
        """Wait for the running tasks; with `cancel`, drop the queued ones and stop the running ones first."""
        if cancel:
            self.pool.shutdown(wait=False, cancel_futures=True)
            LIVE_TASKS.stop()
        self.pool.shutdown(wait=True)


class RayExecutor:
    """Each task is a Ray task; Ray queues them and places them on the cluster by their resources.

    Every node must see the repository and `--out_root` at the same path (a shared file system).
    """

    def __init__(self, address: str | None, threads: int):
        try:
            import ray
        except ImportError:
            raise UserError(
                "the ray backend needs Ray: pip install -r req-scale.txt (or pip install 'ray[default]'), "
                "or use --backend local"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
            )
        self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.threads = threads
        self.remote = ray.remote(run_logged)

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        return f"ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, {self.threads} thread(s) per CPU task"

    def has_capacity(self) -> bool:
        return True  # Ray queues tasks until resources free up

    def submit(self, task: Task, log: Path, attempt: int) -> Future:
        on_gpu = task.uses_gpu and self.has_gpus
        # Ray sets CUDA_VISIBLE_DEVICES for a task with num_gpus; a CPU task must not see the node's GPUs.
        env = {
            k: v for k, v in placement_env(self.threads, None).items() if not (on_gpu and k == "CUDA_VISIBLE_DEVICES")
        }
        options = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": self.threads}
        ref = self.remote.options(max_retries=0, **options).remote(task.command(self.threads), env, str(log), attempt)
        return ref.future()

    def release(self, future: Future) -> None:
        pass

    def close(self, cancel: bool = False) -> None:
        self.ray.shutdown()


@dataclass
class RunReport:
    """What one run did; written as JSON beside the task logs."""

    experiment: str
    skipped: list[str] = field(default_factory=list)  # already done before the run
    finished: dict[str, float] = field(default_factory=dict)  # name -> seconds
    failed: dict[str, dict] = field(default_factory=dict)  # name -> {exit_status, log}
    not_started: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_started

    def summary(self) -> str:
        lines = [
            f"{self.experiment}: {len(self.finished)} task(s) finished, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed, {len(self.not_started)} not started"
        ]
        for name, info in self.failed.items():
            lines.append(f"  FAILED {name} (exit status {info['exit_status']}), log: {info['log']}")
            lines += [f"    | {line}" for line in info["tail"]]
        if self.not_started:
            lines.append(f"  not started: {', '.join(self.not_started)}")
        if self.failed or self.not_started:
            lines.append("  finished work is kept; rerun the same command to do only what is missing")
        return "\n".join(lines)


def _log_tail(log: Path, n: int = 5) -> list[str]:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if not line.startswith("===")]
    except OSError:
        return []
    return lines[-n:]


def execute(
    tasks: list[Task],
    executor,
    log_dir: Path,
    experiment: str,
    retries: int = 1,
    keep_going: bool = False,
) -> RunReport:
    """Run the tasks still pending, in dependency order, as far as the executor allows at once.

    A task that fails is retried `retries` times. A task that still fails stops the run: nothing new starts,
    running tasks finish (their outputs are kept). With `keep_going`, tasks that do not depend on it go on.
    """
    todo = {t.name: t for t in pending(tasks)}
    report = RunReport(experiment, skipped=[t.name for t in tasks if t.name not in todo])
    finished = set(report.skipped)
    running: dict[Future, tuple[Task, int]] = {}
    started: dict[str, float] = {}
    stopping = False
    bar = tqdm(total=len(todo), desc=experiment, unit="task", dynamic_ncols=True)

    def log_of(task: Task) -> Path:
        return log_dir / f"{task.name}.log"

    lost: set[str] = set()  # failed tasks, and the tasks that need them
    try:
        while True:
            for name, task in list(todo.items()):
                if stopping or not executor.has_capacity():
                    break
                if any(d in lost for d in task.deps):
                    lost.add(name)
                    continue
                if all(d in finished for d in task.deps):
                    log_of(task).unlink(missing_ok=True)  # one log per task: this run's attempts only
                    started[name] = time.perf_counter()
                    running[executor.submit(task, log_of(task), 1)] = (task, 1)
                    del todo[name]
            if not running:
                break
            bar.set_postfix_str(", ".join(sorted(t.name for t, _ in running.values()))[:60])
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task, attempt = running.pop(future)
                executor.release(future)
                try:
                    rc = future.result()
                except Exception as exc:  # the backend could not run it at all
                    rc = -1
                    with log_of(task).open("a") as f:
                        f.write(f"=== the {type(exc).__name__} backend error: {exc}\n")
                if rc == 0:
                    finished.add(task.name)
                    report.finished[task.name] = round(time.perf_counter() - started[task.name], 1)
                    bar.update()
                elif attempt <= retries and rc != USER_ERROR_EXIT:
                    tqdm.write(f"{task.name} failed (exit status {rc}); retrying, log: {log_of(task)}")
                    running[executor.submit(task, log_of(task), attempt + 1)] = (task, attempt + 1)
                else:
                    lost.add(task.name)
                    report.failed[task.name] = {
                        "exit_status": rc, "log": str(log_of(task)), "tail": _log_tail(log_of(task)),
                    }  # fmt: skip
                    again = "on a user error, not retried" if rc == USER_ERROR_EXIT else "again"
                    tqdm.write(f"{task.name} failed {again} (exit status {rc}); log: {log_of(task)}")
                    stopping = not keep_going
    except KeyboardInterrupt:
        executor.close(cancel=True)
        raise
    finally:
        bar.close()
    report.not_started = list(todo)
    return report


def write_report(report: RunReport, log_dir: Path) -> Path:
    path = log_dir / "last_run.json"
    atomic_write_json(report.__dict__, path)
    return path
