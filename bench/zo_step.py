"""Benchmark one fedtune MeZO step against two forwards, MeZO's own step and backprop.

Measures, on CPU, for one OPT model built from a config (no weights are downloaded) and
one batch of random token ids with ``labels = input_ids`` (causal-LM loss):

* time (median over ``--steps`` repeats after ``--warmup``, interleaved round-robin in
  this process so that machine drift hits every contender alike):
  one forward under ``torch.inference_mode``; one :func:`fedtune.zo.mezo.zo_step`; a step
  of the ZO client's local loop (:func:`fedtune.zo.fedkseed.local_train` over 4 steps, per
  step: a step's restore+update shares a pass with the next step's +eps); one
  MeZO-reference step (MeZO's trainer, Malladi et al. 2023, https://arxiv.org/abs/2305.17333:
  ``torch.manual_seed(seed)`` then ``torch.normal`` per parameter, regenerated for each of
  the perturb (+1, -2, +1) passes and once more for the update); one full-model
  perturbation pass of each;
  each round's step over that round's two forwards gives the ratio's quartiles (how far
  the machine's noise reaches), and the pass time gives the floor a step cannot go under
  (3 passes over the weights alone, 2 a step in the local loop);
* memory: peak RSS of the whole process (interpreter, torch and weights included, which
  is what a user sees) in a fresh subprocess per phase: forward only, fedtune ZO step,
  MeZO-reference step, backprop + ``torch.optim.AdamW``. The peak is reset after the
  model is built (``/proc/self/clear_refs``), so it covers the phase only;
* perturbation throughput on a 10M-element float32 tensor: generate and add ``c * z``
  with fedtune's torch and numpy streams, and ``torch.normal`` + ``add_`` as a baseline.

fedtune's step, pass and stream are also timed on the pure torch/numpy path (``_old``:
``fedtune.rng.pure_path``, what ran before the compiled replay kernel and still runs where
it cannot build), interleaved with the rest, so old and new are compared in one run.

Prints the set-up on the first line, then ``name=value`` lines, the headline last.

Run from the repository root::

    python bench/zo_step.py                 # OPT-125m shape, a few minutes on 2 cores
    python bench/zo_step.py --model small   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import transformers
from transformers import OPTConfig, OPTForCausalLM

from fedtune import rng as np_rng
from fedtune.rng import pure_path
from fedtune.rng import torch_backend as torch_rng
from fedtune.zo.fedkseed import local_train
from fedtune.zo.mezo import NamedParams, apply_direction_, zo_step

_MODELS = {
    "opt-125m": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
        "vocab_size": 50272,
    },
    "small": {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "ffn_dim": 1024,
        "vocab_size": 8192,
    },
}
_MAX_POSITIONS = 2048
_PHASES = ("forward", "zo_step", "mezo_reference", "backprop_adamw")
# MeZO's defaults for OPT fine-tuning (eps 1e-3, lr 1e-7 / 1e-6); the values do not change
# the cost, only keep the weights sane across repeats.
_EPS = 1e-3
_LR = 1e-7
_RNG_ELEMENTS = 10_000_000
_LOCAL_STEPS = 4  # consecutive steps of the client's local loop, timed as one call
_MIB = 1024 * 1024


def _build(model: str, batch: int, seq: int, seed: int) -> tuple[OPTForCausalLM, torch.Tensor]:
    """The model (float32, eval mode, seeded init) and a ``(batch, seq)`` int64 batch."""
    shape = _MODELS[model]
    config = OPTConfig(
        **shape, max_position_embeddings=_MAX_POSITIONS, word_embed_proj_dim=shape["hidden_size"]
    )
    with torch_rng.seeded_init(seed, "bench", "model"):
        net = OPTForCausalLM(config).float().eval()
    ids = np_rng.generator(seed, "bench", "batch").integers(0, shape["vocab_size"], (batch, seq))
    return net, torch.from_numpy(ids).to(torch.int64)


def _loss_fn(net: OPTForCausalLM, ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: net(input_ids=ids, labels=ids).loss


def _mezo_perturb(params: NamedParams, seed: int, scale: float) -> None:
    """MeZO's ``zo_perturb_parameters``: reseed once, then one fresh ``torch.normal`` per
    parameter. In-place ``add_`` (MeZO's own is out of place), kinder to the reference."""
    torch.manual_seed(seed)
    for _, p in params:
        z = torch.normal(mean=0, std=1, size=p.shape, dtype=p.dtype, device=p.device)
        p.data.add_(z, alpha=scale)


@torch.inference_mode()
def _mezo_reference_step(
    params: NamedParams, loss_fn: Callable[[], torch.Tensor], seed: int, eps: float, lr: float
) -> None:
    """MeZO's trainer step: perturb +eps, forward, -2 eps, forward, +eps (restore), then
    ``zo_update`` regenerates z a 4th time: w -= lr * g * z."""
    _mezo_perturb(params, seed, eps)
    loss_plus = float(loss_fn())
    _mezo_perturb(params, seed, -2.0 * eps)
    loss_minus = float(loss_fn())
    _mezo_perturb(params, seed, eps)
    _mezo_perturb(params, seed, -lr * (loss_plus - loss_minus) / (2.0 * eps))


def _time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, steps: int
) -> dict[str, list[float]]:
    """Seconds of each call of each function, calls interleaved round-robin (one list per
    function, in round order, so that round ``r``'s figures were measured side by side).

    CPU ops are synchronous, so there is no device to synchronise before reading the clock.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(ts) for name, ts in times.items()}


def _time_steps(args: argparse.Namespace, net: OPTForCausalLM, ids: torch.Tensor) -> dict[str, float]:
    params = list(net.named_parameters())
    loss_fn = _loss_fn(net, ids)
    seeds = iter(range(args.seed + 1, 1 << 62))

    @torch.inference_mode()
    def forward() -> float:
        return float(loss_fn())

    @torch.inference_mode()
    def zo_pass_pair() -> None:
        seed = next(seeds)
        apply_direction_(params, seed, _EPS)
        apply_direction_(params, seed, -_EPS)

    @torch.inference_mode()
    def zo_pass_pair_old() -> None:
        with pure_path():
            zo_pass_pair()

    def zo_step_old() -> None:
        with pure_path():
            zo_step(params, loss_fn, seed=next(seeds), eps=_EPS, lr=_LR)

    @torch.inference_mode()
    def mezo_pass_pair() -> None:
        seed = next(seeds)
        _mezo_perturb(params, seed, _EPS)
        _mezo_perturb(params, seed, -_EPS)

    def local_steps() -> None:
        # the client's loop (fedtune.zo.fedkseed.local_train, as the ZO client runs it): a
        # step's restore+update shares its pass with the next step's +eps
        first = next(seeds)
        local_train(params, lambda step: loss_fn(), keys=range(first, first + _LOCAL_STEPS),
                    seed_of_key=int, eps=_EPS, lr=_LR)

    times = _time_interleaved(
        {
            "forward_s": forward,
            "zo_local_steps_s": local_steps,
            "zo_step_s": lambda: zo_step(params, loss_fn, seed=next(seeds), eps=_EPS, lr=_LR),
            "zo_step_s_old": zo_step_old,
            "mezo_reference_step_s": lambda: _mezo_reference_step(params, loss_fn, next(seeds), _EPS, _LR),
            "zo_pass_pair": zo_pass_pair,
            "zo_pass_pair_old": zo_pass_pair_old,
            "mezo_pass_pair": mezo_pass_pair,
        },
        args.warmup,
        args.steps,
    )
    medians = _medians(times)
    # each round's step over that round's forward: the spread says how far the machine's
    # noise reaches (a median ratio is only as good as this)
    paired = sorted(step / (2 * fwd) for step, fwd in zip(times["zo_step_s"], times["forward_s"]))
    medians["paired_q1"], medians["paired_q3"] = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    medians["zo_local_step_s"] = medians.pop("zo_local_steps_s") / _LOCAL_STEPS
    medians["zo_perturb_pass_s"] = medians.pop("zo_pass_pair") / 2
    medians["zo_perturb_pass_s_old"] = medians.pop("zo_pass_pair_old") / 2
    medians["mezo_reference_perturb_pass_s"] = medians.pop("mezo_pass_pair") / 2
    return medians


def _time_rng(repeats: int, seed: int) -> dict[str, float]:
    """Bytes of float32 z generated and added per second, median of ``repeats``."""
    x = torch.zeros(_RNG_ELEMENTS, dtype=torch.float32)
    a = np.zeros(_RNG_ELEMENTS, dtype=np.float32)

    def torch_normal() -> None:
        torch.manual_seed(seed)
        x.add_(torch.normal(mean=0, std=1, size=x.shape, dtype=x.dtype), alpha=_EPS)

    def old(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with pure_path():
                fn()
        return run

    medians = _medians(_time_interleaved(
        {
            "rng_bytes_per_second_torch": lambda: torch_rng.add_scaled_(x, seed, "bench.rng", _EPS),
            "rng_bytes_per_second_numpy": lambda: np_rng.add_scaled_(a, seed, "bench.rng", _EPS),
            "rng_bytes_per_second_torch_old": old(lambda: torch_rng.add_scaled_(x, seed, "bench.rng", _EPS)),
            "rng_bytes_per_second_numpy_old": old(lambda: np_rng.add_scaled_(a, seed, "bench.rng", _EPS)),
            "torch_normal_bytes_per_second": torch_normal,
        },
        warmup=1,
        steps=repeats,
    ))
    return {name: 4 * _RNG_ELEMENTS / s for name, s in medians.items()}


# ---- memory: one fresh process per phase -------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _run_phase(args: argparse.Namespace) -> None:
    """Child process: build, reset the RSS peak, run the phase, print one JSON line."""
    torch.set_num_threads(args.threads)
    net, ids = _build(args.model, args.batch, args.seq, args.seed)
    params = list(net.named_parameters())
    loss_fn = _loss_fn(net, ids)
    rss_after_build = _proc_status_kib("VmRSS")
    peak_of_build = _proc_status_kib("VmHWM")
    reset = _reset_peak_rss()
    if args.phase == "backprop_adamw":
        # Eval mode (no dropout) keeps the math identical to the other phases.
        optimizer = torch.optim.AdamW(net.parameters(), lr=_LR)
    for rep in range(args.memory_reps):
        seed = args.seed + 1 + rep
        if args.phase == "forward":
            with torch.inference_mode():
                float(loss_fn())
        elif args.phase == "zo_step":
            zo_step(params, loss_fn, seed=seed, eps=_EPS, lr=_LR)
        elif args.phase == "mezo_reference":
            _mezo_reference_step(params, loss_fn, seed, _EPS, _LR)
        else:
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # VmHWM is ru_maxrss after the reset; fall back to ru_maxrss (KiB on Linux).
    peak = _proc_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "phase": args.phase,
        "rss_after_build_kib": rss_after_build,
        "peak_of_build_kib": peak_of_build,
        "peak_rss_kib": peak,
        "peak_reset_after_build": reset,
    }))


def _measure_phase(args: argparse.Namespace, phase: str) -> dict[str, int | bool]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--phase", phase,
        "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
        "--seed", str(args.seed), "--memory-reps", str(args.memory_reps),
        "--threads", str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"memory phase {phase!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- CLI ------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(_MODELS), default="opt-125m")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each contender")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats before timing")
    parser.add_argument("--rng-repeats", type=int, default=5, help="timed repeats, 10M-element RNG")
    parser.add_argument("--memory-reps", type=int, default=2, help="repeats of a phase in its memory process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-phase memory processes")
    parser.add_argument("--phase", choices=_PHASES, help=argparse.SUPPRESS)  # internal: one memory phase
    args = parser.parse_args(argv)
    errors = [
        f"`--{name.replace('_', '-')}` must be >= {low}, got {getattr(args, name)}"
        for name, low in (
            ("batch", 1), ("seq", 2), ("steps", 1), ("warmup", 0),
            ("rng_repeats", 1), ("memory_reps", 1), ("seed", 0), ("threads", 1),
        )
        if getattr(args, name) < low
    ]
    if args.seq > _MAX_POSITIONS:
        errors.append(f"`--seq` must be <= {_MAX_POSITIONS} (OPT's positions), got {args.seq}")
    if errors:
        parser.error("; ".join(errors))
    return args


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = _parse_args(argv)
    if args.phase is not None:
        _run_phase(args)
        return
    torch.set_num_threads(args.threads)
    net, ids = _build(args.model, args.batch, args.seq, args.seed)
    num_params = sum(p.numel() for p in net.parameters())
    print(
        f"device=cpu threads={torch.get_num_threads()} dtype=float32 model={args.model} "
        f"params={num_params:,} ({4 * num_params / _MIB:.1f} MiB) batch={args.batch}x{args.seq} "
        f"attn={net.config._attn_implementation} seed={args.seed} steps={args.steps} warmup={args.warmup} "
        f"torch={torch.__version__} transformers={transformers.__version__} numpy={np.__version__} "
        f"python={platform.python_version()}",
        flush=True,
    )

    t = _time_steps(args, net, ids)
    for name in ("forward_s", "zo_step_s_old", "zo_step_s", "zo_local_step_s", "mezo_reference_step_s"):
        print(f"{name}={t[name]:.4f}")
    # Where a step's time goes beyond its two forwards: its perturbation passes over the
    # whole model (fedtune: +eps, -2 eps, restore+update; MeZO: those and a 4th for z).
    print(f"zo_perturb_pass_s_old={t['zo_perturb_pass_s_old']:.4f}")
    print(f"zo_perturb_pass_s={t['zo_perturb_pass_s']:.4f}")
    print(f"mezo_reference_perturb_pass_s={t['mezo_reference_perturb_pass_s']:.4f}")
    print(f"zo_step_minus_two_forwards_s={t['zo_step_s'] - 2 * t['forward_s']:.4f}")
    print(f"zo_three_passes_share_of_step={3 * t['zo_perturb_pass_s'] / t['zo_step_s']:.3f}")
    # the least a step can cost beside its two forwards: its passes over the weights at the
    # measured pass time (3 for one step alone, 2 a step in the client's local loop)
    print(f"zo_step_floor_over_two_forwards={1 + 3 * t['zo_perturb_pass_s'] / (2 * t['forward_s']):.3f}")
    print(f"zo_local_step_floor_over_two_forwards={1 + 2 * t['zo_perturb_pass_s'] / (2 * t['forward_s']):.3f}")
    print(f"zo_step_over_two_forwards_paired_q1={t['paired_q1']:.3f}")
    print(f"zo_step_over_two_forwards_paired_q3={t['paired_q3']:.3f}")
    mezo_share = 4 * t["mezo_reference_perturb_pass_s"] / t["mezo_reference_step_s"]
    print(f"mezo_reference_four_passes_share_of_step={mezo_share:.3f}", flush=True)
    del net, ids

    rates = _time_rng(args.rng_repeats, args.seed)
    for name, rate in rates.items():
        print(f"{name}={rate:.3e}")
    print(f"rng_torch_over_torch_normal_throughput="
          f"{rates['rng_bytes_per_second_torch'] / rates['torch_normal_bytes_per_second']:.2f}")

    if not args.no_memory:
        print("memory_measure=peak_rss_whole_process (VmHWM, reset after model build; "
              "includes interpreter, torch and weights), one fresh process per phase", flush=True)
        mem = {phase: _measure_phase(args, phase) for phase in _PHASES}
        peak = {phase: m["peak_rss_kib"] / 1024 for phase, m in mem.items()}
        print(f"rss_after_build_mib={mem['zo_step']['rss_after_build_kib'] / 1024:.1f}")
        print(f"peak_of_build_mib={mem['zo_step']['peak_of_build_kib'] / 1024:.1f}")
        for phase in _PHASES:
            above = peak[phase] - mem[phase]["rss_after_build_kib"] / 1024
            print(f"{phase}_peak_mib={peak[phase]:.1f}")
            print(f"{phase}_peak_above_build_mib={above:.1f}")
        print(f"zo_peak_minus_inference_peak_mib={peak['zo_step'] - peak['forward']:.1f}")
        print(f"zo_peak_over_inference_peak={peak['zo_step'] / peak['forward']:.3f}")
        print(f"zo_peak_over_mezo_reference_peak={peak['zo_step'] / peak['mezo_reference']:.3f}")
        print(f"backprop_adam_peak_over_zo_peak={peak['backprop_adamw'] / peak['zo_step']:.3f}")

    print(f"bench_wall_s={time.perf_counter() - started:.0f}")
    print(f"zo_step_over_mezo_reference={t['zo_step_s'] / t['mezo_reference_step_s']:.3f}")
    print(f"zo_local_step_over_two_forwards={t['zo_local_step_s'] / (2 * t['forward_s']):.3f}")
    print(f"zo_step_over_two_forwards_old={t['zo_step_s_old'] / (2 * t['forward_s']):.3f}")
    print(f"zo_step_over_two_forwards={t['zo_step_s'] / (2 * t['forward_s']):.3f}")


if __name__ == "__main__":
    main()
