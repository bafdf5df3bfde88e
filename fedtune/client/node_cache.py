"""A deployed ZO node's synced weights, cached on its own disk between ClientApp processes.

Flower 1.41's deployment engine runs every message in a fresh ClientApp process, which
builds the model at the initial weights. Without a cache it must replay every round of the
seed log so far (:mod:`fedtune.client.node_log`): one pass over the trainable weights per distinct
seed of every past round, a cost that grows with the run (at OPT-125m, ~0.3 s a seed, ~15
seeds a round). With ``cache-dir`` in the node config (``python -m deploy.supernode`` sets
it), the process that trained writes the synced weights it started from, and the next one
loads them and replays only the rounds since.

The file is ``<cache-dir>/<run key>.safetensors`` with the state round in its metadata,
written atomically; a file of another run, of a later state than the server's, or
unreadable is ignored (the log path then works as before). The server still checks every
client's digest, so a cache can never make a node train from wrong weights unnoticed.

A file is the size of the trainable weights (350 MB at OPT-125m, 28 GB for a 7B model in
float32), one per run: after each write, only the ``cache-keep`` most recently written runs'
files stay (node config, default 2, so that two runs sharing the node do not evict each
other), and temporary files a killed process left behind are removed once an hour old.
An evicted run that comes back replays the seed log instead. Torch-free: the torch and the
device client both use it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from fedtune.dtypes import to_numpy

__all__ = ["CACHE_DIR", "CACHE_KEEP", "cache_path", "keep_of", "prune", "restore", "store"]

CACHE_DIR = "cache-dir"  # node config key: a directory on the node's own disk
CACHE_KEEP = "cache-keep"  # node config key: how many runs' files to keep (default DEFAULT_KEEP)
DEFAULT_KEEP = 2
STALE_TMP_S = 3600.0  # a temporary file this old belongs to no live write

log = logging.getLogger(__name__)


def cache_path(context: Context, client: Any) -> Path | None:
    """The cache file for ``client``'s run on this node, or None if the node has no cache."""
    directory = context.node_config.get(CACHE_DIR)
    return Path(str(directory)) / f"{client.key}.safetensors" if directory else None


def _cached_round(path: Path, key: str) -> int | None:
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, SafetensorError):  # missing or not a safetensors file
        return None
    if meta.get("run-key") != key or not meta.get("round", "").isdigit():
        return None
    return int(meta["round"])


def restore(path: Path | None, client: Any, state_round: int) -> None:
    """Load the cached weights into a fresh ``client`` (one still at state 0), if they help."""
    if path is None or client.synced_round != 0:
        return
    cached = _cached_round(path, client.key)
    if cached is None or not 0 < cached <= state_round:
        return
    try:
        weights = load_file(str(path))
    except (OSError, SafetensorError) as exc:  # damaged: the log path instead
        log.warning("ignored the node's weight cache %s: %s", path, exc)
        return
    shapes = {name: tuple(t.shape) for name, t in client.base}
    if {n: tuple(w.shape) for n, w in weights.items()} != shapes:  # checked before anything is overwritten
        log.warning("ignored the node's weight cache %s: its tensors are not this model's", path)
        return
    client.sync(cached, [], weights)
    log.info("loaded the synced weights of state %d from %s", cached, path)


def store(path: Path | None, client: Any, keep: int = DEFAULT_KEEP) -> None:
    """Write ``client``'s synced weights if they are newer than the cached ones, then
    :func:`prune` the directory to the ``keep`` newest runs."""
    state = client.synced_round
    if path is None or state == 0:
        return
    cached = _cached_round(path, client.key)
    if cached is not None and cached >= state:
        return
    arrays = {name: np.ascontiguousarray(_numpy(t)) for name, t in client.base}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={"run-key": client.key, "round": str(state)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    prune(path.parent, keep)


def keep_of(context: Context) -> int:
    """The node's ``cache-keep`` (at least 1: the run being written)."""
    return max(1, int(context.node_config.get(CACHE_KEEP, DEFAULT_KEEP)))


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently written cache files in ``directory``, and
    temporary files older than :data:`STALE_TMP_S`; returns what was removed."""
    now, removed = time.time(), []
    files = []
    for entry in directory.iterdir():
        try:
            mtime = entry.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if entry.suffix == ".safetensors":
            files.append((mtime, entry))
        elif entry.suffix == ".tmp" and now - mtime > STALE_TMP_S:
            removed.append(entry)
    removed += [entry for _, entry in sorted(files, reverse=True)[keep:]]
    done = []
    for entry in removed:
        try:
            entry.unlink(missing_ok=True)
        except OSError as exc:  # never fail the round over a cache file
            log.warning("could not remove %s from the node's weight cache: %s", entry, exc)
            continue
        log.info("removed %s from the node's weight cache", entry.name)
        done.append(entry)
    return done


def _numpy(t: Any) -> Any:
    """A numpy view of a torch tensor (bfloat16 as ``ml_dtypes.bfloat16``) or a numpy array."""
    return to_numpy(t) if hasattr(t, "detach") else t
