"""Atomic writes: a reader never sees a half-written artifact, even if the writer is killed.

A write goes to a temp file beside the target, named `.<name>.<host>~<pid>.<random>.tmp`, and is renamed over
the target when complete. A writer killed by SIGKILL leaves its temp file behind; its name says whose it is,
so the next run of the step removes it (`remove_stale_temp_files`) and never a live writer's.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, before any thread could create a file in between
TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname().replace(".", "_").replace("~", "_")
OTHER_HOST_STALE_S = 3600  # a temp file lives for seconds; one of another host this old is a killed writer's


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temp file in the same folder, fsync, then rename it over `path` (atomic on POSIX).

    The file gets the permissions of a plain `open` under the user's umask (mkstemp's temp files are 0600, which
    collaborators on a shared cluster could not read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}~{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` that leaves either the old file or the complete new one, never a partial one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def _writer_of(tmp: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that made a temp file, from its name (`.<name>.<host>~<pid>.<random>.tmp`)."""
    parts = tmp.name.split(".")
    if len(parts) < 4 or "~" not in parts[-3]:
        return None
    host, _, pid = parts[-3].rpartition("~")
    return (host, int(pid)) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete the temp files of writers that were killed (SIGKILL skips the cleanup above); returns them.

    A temp file's name says which process on which host is writing it. One of this host is stale when that
    process is gone; one of another host (a shared file system) when it is older than `OTHER_HOST_STALE_S`.
    A live writer's temp file is never touched."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for tmp in (Path(folder).rglob if recursive else Path(folder).glob)(f".*{TMP_SUFFIX}"):
        writer = _writer_of(tmp)
        if writer is None:
            continue  # not ours
        host, pid = writer
        try:
            stale = not _alive(pid) if host == _HOST else time.time() - tmp.stat().st_mtime > OTHER_HOST_STALE_S
        except FileNotFoundError:  # its writer just renamed or removed it
            continue
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_csv(frame, path: Path, float_format: str = "%.7g") -> None:
    """A pandas DataFrame as CSV, index included (dataset indices label rows and columns)."""
    atomic_write_text(frame.to_csv(float_format=float_format), path)


def atomic_savefig(fig, path: Path) -> None:
    """Save a matplotlib figure in the format its suffix names (png, pdf)."""
    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:], bbox_inches="tight", dpi=150))
