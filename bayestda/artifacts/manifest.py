"""What steps 3 and 4 were computed from: the manifest each writes last in results/<experiment>/.

A manifest holds the step's inputs (methods, seeds, k and a digest of the score files it read). Its presence
marks finished results; steps 3 and 4 and the report compare manifests with each other and with the score
files on disk (`analysis`, `report.check_results_agree`), and every refusal names the command that brings the
results up to date (`stats_command`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core import hints
from ..core.errors import UserError
from ..core.paths import read_seeds

PVALUES_MANIFEST = "pvalues_manifest.json"  # written last by step 3
CORRELATIONS_MANIFEST = "correlations_manifest.json"  # written last by step 4


def read_manifest(path: Path) -> dict | None:
    """A step's manifest, or None if the step has not finished; a one-line error if it is unreadable."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not all(isinstance(manifest["inputs"][key], list) for key in ("methods", "seeds")):
            raise TypeError("methods and seeds must be lists")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); rerun its step with --overwrite") from None
    return manifest


def read_inputs(path: Path) -> dict | None:
    """The inputs of a finished step, or None."""
    manifest = read_manifest(path)
    return None if manifest is None else manifest["inputs"]


def stats_command(script: str, experiment: str, methods: list[str], seeds: list[int], *extra: str) -> str:
    """The step-3 or step-4 command for these methods and seeds (by their lines in seeds.txt), runnable as written."""
    argv = [script, "--experiment", experiment, "--methods", ",".join(methods)]
    if list(seeds) != read_seeds():
        argv += ["--seed_ids", *(str(read_seeds().index(s)) for s in seeds)]
    return hints.command(argv, *extra, accepts=("out_root",))
