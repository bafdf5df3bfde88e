"""Per-partition client state on disk, for simulations with more clients than Flower nodes.

A ``fedtune run`` simulation gives Flower only as many nodes as clients run in a round
(:attr:`fedtune.config.FederationConfig.simulated_nodes`); the server names the partition a
node plays in each train message, and a node plays a different partition from one round to
the next. What a client must carry from one of its rounds to its next (the error-feedback
residual of its compressed uploads) therefore cannot live in the node's Flower state: it
lives here, one safetensors file per partition and name under ``<run dir>/client-state/``,
written atomically (a crash leaves the old file or the new one, never half of one). Only
clients that have trained have a file, so memory never grows with the population and the
disk holds exactly the state the algorithm needs.

Deployment keeps such state in ``context.state``: there a SuperNode is one silo.
Torch-free (numpy + safetensors).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

__all__ = ["PartitionState"]

DIR_NAME = "client-state"


class PartitionState:
    """Named dicts of float arrays, one file per (partition, name), under ``root``."""

    def __init__(self, run_dir: Path | str) -> None:
        self.root = Path(run_dir) / DIR_NAME

    def path(self, partition: int, name: str) -> Path:
        if partition < 0 or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad partition state key ({partition}, {name!r})")
        return self.root / f"{partition:06d}.{name}.safetensors"

    def load(self, partition: int, name: str) -> dict[str, np.ndarray] | None:
        """What was saved for ``partition`` under ``name``, or None if nothing was."""
        path = self.path(partition, name)
        return load_file(path) if path.is_file() else None

    def save(self, partition: int, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state ``name`` of ``partition`` (atomically)."""
        path = self.path(partition, name)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            save_file({n: np.ascontiguousarray(v) for n, v in arrays.items()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
