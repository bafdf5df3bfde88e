"""Will a simulation fit in this machine's memory? An estimate made before anything starts.

A simulation holds one server process, Ray's own processes, and one worker process per
client running at once (``workers = num_cpus / num_cpus_per_client``, at most the clients
sampled a round); each worker holds one copy of the model and plays the virtual clients
in turn. How many clients *exist* does not enter: a client's state between rounds is the
round it last synced, or its error-feedback residual once it has trained (LoRA with
``[compress]``). So the estimate is::

    server + Ray + workers x (process + model) + residuals of the clients that can have trained

with per-process and per-model figures measured here (bench/scale.py: a tiny-llama worker
peaks at ~0.6 GiB, nearly all of it the interpreter, torch and Flower). It is an
estimate: the run is refused only when it exceeds the memory available, and the message
says by how much and what to change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from fedtune import algorithms
from fedtune.config import RunConfig
from fedtune.dtypes import itemsize

__all__ = ["MemoryEstimate", "available_memory", "estimate_memory", "parameter_count"]

GIB = 2**30
PROCESS_BYTES = 700 * 2**20  # a Python process with torch, transformers and Flower imported
RAY_BYTES = 500 * 2**20  # Ray's GCS, raylet and its helpers
MODEL_COPIES = 3  # weights, plus what a step needs on top (activations, replay buffers, gradients of LoRA)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a simulation is expected to need, part by part."""

    workers: int
    worker_bytes: int
    server_bytes: int
    ray_bytes: int
    state_bytes: int  # per-client state kept between rounds (error-feedback residuals)
    available: int

    @property
    def total(self) -> int:
        return self.server_bytes + self.ray_bytes + self.workers * self.worker_bytes + self.state_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def describe(self) -> str:
        return (
            f"about {self.total / GIB:.1f} GiB: {self.workers} worker(s) x {self.worker_bytes / GIB:.2f} GiB "
            f"+ server {self.server_bytes / GIB:.2f} GiB + Ray {self.ray_bytes / GIB:.2f} GiB"
            + (f" + client state {self.state_bytes / GIB:.2f} GiB" if self.state_bytes else "")
            + f", of {self.available / GIB:.1f} GiB available"
        )


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable), or its physical memory if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parameter_count(cfg: RunConfig) -> int:
    """Parameters of the run's base model, without loading its weights."""
    m = cfg.model
    if m.path:
        from safetensors import safe_open

        from fedtune.models import resolve_model_path

        model_dir, total = Path(resolve_model_path(m.path)), 0
        for file in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(file), "np") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (safe_open is not iterable)
        if total:
            return total
        return sum(f.stat().st_size for f in model_dir.glob("*.bin")) // 4
    import torch
    import transformers

    from fedtune.models import build_config

    config = build_config(m.config)
    auto = transformers.AutoModelForCausalLM if m.task == "causal-lm" else transformers.AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate_memory(cfg: RunConfig, num_params: int, cores: int, available: int) -> MemoryEstimate:
    """The memory ``cfg``'s simulation needs on a machine with ``cores`` and ``available`` bytes."""
    s, f = cfg.simulation, cfg.federation
    pool = s.num_cpus or cores
    workers = max(1, min(int(pool // s.num_cpus_per_client), f.clients_per_round))
    model = itemsize(cfg.model.dtype) * num_params
    state = 0
    if algorithms.get(cfg.algorithm.name).family == "lora" and cfg.compress.method != "none" and cfg.compress.error_feedback:
        # a residual the size of the upload for every client that can have trained; the upload
        # is a LoRA adapter, a few percent of the model at most: bound it by 5 %
        trained = min(f.num_clients, f.clients_per_round * cfg.rounds)
        state = trained * model // 20
    return MemoryEstimate(
        workers=workers,
        worker_bytes=PROCESS_BYTES + MODEL_COPIES * model,
        server_bytes=PROCESS_BYTES + MODEL_COPIES * model,
        ray_bytes=RAY_BYTES,
        state_bytes=state,
        available=available,
    )
