"""The Slurm backend: one job array per stage, one array element per seed_id, chained with afterok dependencies.

`write_scripts` writes plain `sbatch` scripts and a `submit.sh` that chains them (the `--dry_run` output, to read,
edit and submit by hand). `submit` sends the same arrays through submitit. Either way a failed element retries
once inside its own job, and its output goes to the same per-task log as with the local backend.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..core.io import atomic_write_text
from ..core.paths import REPO_ROOT
from .execute import THREAD_VARS, placement_env, run_with_retry
from .graph import Task

ARRAY_INDEX = "__SLURM_ARRAY_TASK_ID__"  # replaced by the shell variable after quoting


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 4
    gpus_per_task: int = 1  # for training and TDA stages; 0 runs everything on CPUs
    extra: tuple[str, ...] = ()  # further #SBATCH lines, e.g. "--account=abc"
    retries: int = 1


@dataclass
class Stage:
    """The pending tasks of one stage: a job array over seed_ids, or a single job."""

    name: str
    tasks: list[Task]
    after: list[str] = field(default_factory=list)  # stages that must finish first

    @property
    def seed_ids(self) -> list[int] | None:
        return None if self.tasks[0].seed_id is None else [t.seed_id for t in self.tasks]


def stages(pending: list[Task]) -> list[Stage]:
    """Group the pending tasks by stage, in dependency order, with the stages each depends on."""
    by_name: dict[str, Stage] = {}
    stage_of = {t.name: t.stage for t in pending}
    for task in pending:
        stage = by_name.setdefault(task.stage, Stage(task.stage, []))
        stage.tasks.append(task)
        for dep in task.deps:
            if dep in stage_of and stage_of[dep] not in stage.after:
                stage.after.append(stage_of[dep])
    return list(by_name.values())


def _log_name(stage: Stage, index: str) -> str:
    return f"{stage.name}_seed{index}.log" if stage.seed_ids is not None else f"{stage.name}.log"


def sbatch_script(stage: Stage, experiment: str, log_dir: Path, opts: SlurmOptions) -> str:
    task = stage.tasks[0]
    array = stage.seed_ids is not None
    argv = [sys.executable, *task.command(opts.cpus_per_task, ARRAY_INDEX if array else None)]
    command = " ".join(shlex.quote(a) for a in argv).replace(ARRAY_INDEX, '"$SLURM_ARRAY_TASK_ID"')
    gpus = opts.gpus_per_task if task.uses_gpu else 0
    header = [
        f"--job-name=bayestda-{experiment}-{stage.name}",
        f"--output={log_dir}/slurm-%A_%a.out" if array else f"--output={log_dir}/slurm-%j.out",
        f"--cpus-per-task={opts.cpus_per_task}",
        f"--time={opts.time_min}",
    ]
    if array:
        header.append(f"--array={','.join(map(str, stage.seed_ids))}")
    if gpus:
        header.append(f"--gres=gpu:{gpus}")
    if opts.partition:
        header.append(f"--partition={opts.partition}")
    header += list(opts.extra)
    log = f"{log_dir}/{_log_name(stage, '${SLURM_ARRAY_TASK_ID}' if array else '')}"
    threads = " ".join(f"{v}=${{SLURM_CPUS_PER_TASK:-{opts.cpus_per_task}}}" for v in THREAD_VARS)
    hide_gpus = "" if gpus else "export CUDA_VISIBLE_DEVICES=\n"
    return (
        "#!/bin/bash\n"
        f"# bayestda {experiment}, stage {stage.name}"
        + (": one array element per seed_id" if array else "")
        + ". Written by run_experiment.py --backend slurm.\n"
        + "".join(f"#SBATCH {line}\n" for line in header)
        + f"set -uo pipefail\ncd {shlex.quote(str(REPO_ROOT))}\nexport {threads} PYTHONUNBUFFERED=1\n{hide_gpus}"
        + f'log="{log}"\nmkdir -p "$(dirname "$log")"\n'
        + f"for attempt in $(seq 1 {opts.retries + 1}); do\n"
        + '  echo "=== attempt $attempt on $(hostname)" >> "$log"\n'
        + f'  {command} >> "$log" 2>&1 && exit 0\n'
        + "done\nexit 1\n"
    )


def _shell_name(stage: str) -> str:
    return "jid_" + re.sub(r"\W", "_", stage)


def write_scripts(pending: list[Task], experiment: str, log_dir: Path, script_dir: Path, opts: SlurmOptions):
    """One `NN_<stage>.sbatch` per stage and a `submit.sh` chaining them; returns the paths written."""
    paths = []
    lines = ["#!/bin/bash", f"# Submit {experiment}: every stage waits for the stages it reads (afterok).",
             "set -euo pipefail", 'cd "$(dirname "$0")"']  # fmt: skip
    for i, stage in enumerate(stages(pending), 1):
        path = script_dir / f"{i:02d}_{stage.name}.sbatch"
        atomic_write_text(sbatch_script(stage, experiment, log_dir, opts), path)
        paths.append(path)
        dependency = ":".join(f"${_shell_name(s)}" for s in stage.after)
        flag = f" --dependency=afterok:{dependency}" if dependency else ""
        lines.append(f"{_shell_name(stage.name)}=$(sbatch --parsable{flag} {path.name})")
        lines.append(f'echo "{stage.name}: job ${_shell_name(stage.name)}"')
    submit = script_dir / "submit.sh"
    atomic_write_text("\n".join(lines) + "\n", submit)
    submit.chmod(0o755)
    return [*paths, submit]


def submit(pending: list[Task], experiment: str, log_dir: Path, opts: SlurmOptions) -> dict[str, str]:
    """Submit every stage as a submitit job array with afterok dependencies; returns {stage: job id}."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            "the slurm backend submits through submitit: pip install -r req-scale.txt (or pip install submitit), "
            "or add --dry_run to write sbatch scripts instead"
        ) from None
    job_ids: dict[str, str] = {}
    for stage in stages(pending):
        task = stage.tasks[0]
        gpus = opts.gpus_per_task if task.uses_gpu else 0
        executor = submitit.AutoExecutor(folder=log_dir / "submitit")
        params = {
            "name": f"bayestda-{experiment}-{stage.name}",
            "timeout_min": opts.time_min,
            "cpus_per_task": opts.cpus_per_task,
            "slurm_setup": [f"cd {shlex.quote(str(REPO_ROOT))}", f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}"],
        }
        if gpus:
            params["slurm_gres"] = f"gpu:{gpus}"
        if opts.partition:
            params["slurm_partition"] = opts.partition
        extra = dict(item.lstrip("-").split("=", 1) for item in opts.extra)
        if stage.after:
            extra["dependency"] = "afterok:" + ":".join(job_ids[s] for s in stage.after)
        if extra:
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        env = placement_env(opts.cpus_per_task, None)
        if gpus:
            del env["CUDA_VISIBLE_DEVICES"]  # Slurm sets it to the allocated GPU
        argvs = [t.command(opts.cpus_per_task) for t in stage.tasks]
        logs = [str(log_dir / f"{t.name}.log") for t in stage.tasks]
        jobs = executor.map_array(run_with_retry, argvs, [env] * len(argvs), logs, [opts.retries] * len(argvs))
        job_ids[stage.name] = str(jobs[0].job_id).split("_")[0]
    return job_ids
