"""The package is installed in the venv (`make test` and `make demo` do it), so it imports from any directory."""

import os
import subprocess
import sys


def test_the_package_imports_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "from bayestda import load_checkpoint; import bayestda; "
                           "print(bayestda.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, "not installed: run `make test` (pip install -e .)\n" + proc.stderr
