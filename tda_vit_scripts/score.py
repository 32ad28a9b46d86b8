#!/usr/bin/env python
"""Step 2 for a method without a script of its own (a plug-in's; README, "Your own model and data"): --method NAME,
then the method's own flags (its options), on every checkpoint of each seed, or once per seed.

Writes tda_scores/<model>/<method>/<task>_<n>pc/<seed>.pt.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import GENERIC, tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, GENERIC, "vit"))
