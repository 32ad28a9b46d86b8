"""Named random streams: every source of randomness of a run (initialisation, batch order, crops, dropout, label
noise, subsets) draws from its own seed, derived from one integer and the stream's name, so that each can be varied
or held fixed apart from the others (`training.posterior`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream, so `init` and `batch` never share a stream."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seeded_init(init_seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with its random initialisation drawn from `init_seed` only (torch's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(init_seed, "init"))
        return build()
