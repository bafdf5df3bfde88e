"""A billion-parameter client on a CPU: memory and time of zeroth-order steps in bf16 vs fp32.

Builds a LLaMA-shaped model from fedtune's named configs (``tinyllama-1.1b``: TinyLlama-1.1B's
shape, 1.10B parameters; ``--size 7b``: LLaMA-2-7B's, 6.74B), random init in its own dtype
(nothing downloaded, never a float32 copy of a 16-bit model), and measures each phase in a
fresh subprocess, so every peak is that phase's whole process (interpreter, torch, the
weights: what a user's machine must hold):

* ``inference``: one forward under ``torch.inference_mode`` on a batch of random token ids
  (``--batch`` x ``--tokens``, causal-LM loss), after one warm-up forward;
* ``zo``: the same forward, then one fedtune MeZO step over every weight
  (:func:`fedtune.zo.mezo.zo_step`: +eps, -2 eps, restore-and-update; two forwards), then the
  replay of one round's log entry of 10 distinct seeds (:func:`fedtune.zo.fedkseed.replay_`);
* ``adam`` (float32 only): forward, backward and one ``torch.optim.AdamW`` step, the
  first-order client's memory; refused (and its estimate printed) when weights + gradients +
  AdamW's two moments alone exceed 80 % of the memory available;
* ``lora`` (``--lora``): a LoRA client (PEFT, rank 8 on q_proj/v_proj, float32 adapters and
  AdamW state, fedtune's ``local_train``: two steps, the second timed) over the base in
  float32, bfloat16, and quantised by bitsandbytes to ``nf4`` and ``int8``
  (``model.quantize``, QLoRA; built in float32, then quantised layer by layer). Its
  ``train_peak`` is the peak RSS from after the build (``/proc/self/clear_refs``): what the
  client holds while it trains.

Prints the set-up, then ``name=value`` lines, the headline last:

* ``zo_peak_bf16_over_inference_peak_bf16`` (goal <= 1.1);
* ``zo_peak_bf16_over_zo_peak_fp32`` (goal <= 0.55);
* ``backprop_adam_peak_fp32_over_zo_peak_bf16`` (goal >= 6);
* ``zo_step_over_two_forwards_bf16`` (goal <= 1.1), the headline.

    python bench/big_model.py                          # 1.1B, bf16 and fp32; ~15 min on 2 cores
    python bench/big_model.py --phases zo,inference --dtypes bfloat16
    python bench/big_model.py --size 7b --phases zo --dtypes bfloat16   # the 7B stretch
    python bench/big_model.py --round     # and one FedKSeed round in the simulation engine
    python bench/big_model.py --phases lora --lora   # LoRA over fp32 / bf16 / nf4 / int8 bases

``--round`` also runs one FedKSeed round on the 1.1B model through ``fedtune run``
(simulations/tinyllama-1b.toml, bfloat16, two clients) beside the same run on the 3.2M
tiny-llama, and prints each one's bytes per client, sync mismatches and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"1b": "tinyllama-1.1b", "7b": "llama2-7b"}
REPLAY_SEEDS = 10  # distinct seeds of the round the zo phase replays (one client's 10 local steps)
GOALS = {
    "round_bytes_up_1b_over_3m": "== 1 (--round)",
    "zo_peak_bf16_over_inference_peak_bf16": "<= 1.1",
    "zo_peak_bf16_over_zo_peak_fp32": "<= 0.55",
    "backprop_adam_peak_fp32_over_zo_peak_bf16": ">= 6",
    "zo_step_over_two_forwards_bf16": "<= 1.1",
}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak() -> None:
    """Start the kernel's peak-RSS count (VmHWM) over from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _kib_field(path: str, field: str) -> int:
    """A ``Field:  N kB`` line of a /proc file, in bytes."""
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {path}")


def _hwm_bytes() -> int:
    return _kib_field("/proc/self/status", "VmHWM")


def lora_child(size: str, dtype_name: str, quantize: str, batch: int, tokens: int) -> dict[str, Any]:
    """A LoRA client's two local steps over the base in ``dtype_name``, quantised or not."""
    import torch

    from fedtune.config import LoraConfig
    from fedtune.dtypes import torch_dtype
    from fedtune.lora.adapters import adapter_parameters, inject_lora
    from fedtune.lora.train import local_train
    from fedtune.models import load_model, quantize_base

    dtype = torch_dtype(dtype_name)
    start = time.perf_counter()
    model = load_model(config=CONFIGS[size], task="causal-lm", vocab_size=None, seed=0, dtype=dtype)
    quantize_base(model, quantize, dtype)  # type: ignore[arg-type]
    out: dict[str, Any] = {"build_s": time.perf_counter() - start, "build_peak_rss_bytes": _hwm_bytes()}
    _reset_peak()
    model = inject_lora(model, LoraConfig(rank=8, target_modules=("q_proj", "v_proj")), "causal-lm", 0)
    params = list(adapter_parameters(model).values())
    ids = torch.randint(3, 32000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    times = []
    for _ in range(2):
        start = time.perf_counter()
        result = local_train(model, params, lambda step: batch_, 1, optimizer="adamw", lr=1e-4, weight_decay=0.0,
                             device=torch.device("cpu"), base_dtype=dtype)
        times.append(time.perf_counter() - start)
    out.update(step_s=times[1], loss=float(result.mean_loss), train_peak_rss_bytes=_hwm_bytes(),
               adapter_params=sum(p.numel() for p in params))
    return out


def _available_bytes() -> int:
    return _kib_field("/proc/meminfo", "MemAvailable")


def child(phase: str, size: str, dtype_name: str, batch: int, tokens: int, threads: int) -> dict[str, Any]:
    """One phase in this (fresh) process; returns its numbers."""
    import numpy as np
    import torch

    from fedtune.dtypes import torch_dtype
    from fedtune.models import load_model
    from fedtune.zo.fedkseed import replay_
    from fedtune.zo.mezo import zo_step
    from fedtune.zo.seeds import SeedUpdate, candidate_seeds

    torch.set_num_threads(threads)
    dtype = torch_dtype(dtype_name)
    if phase == "adam":
        from transformers import AutoModelForCausalLM

        from fedtune.models import build_config

        with torch.device("meta"):  # the parameter count without allocating the weights
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(build_config(CONFIGS[size])).parameters())
        need = params * (4 + 4 + 8)  # weights, gradients, AdamW's two moments, float32
        if need > 0.8 * _available_bytes():  # leave the machine room: an OOM kill takes others with it
            return {"refused": True, "estimate_bytes": need, "available_bytes": _available_bytes()}
    start = time.perf_counter()
    model = load_model(config=CONFIGS[size], task="causal-lm", vocab_size=None, seed=0, dtype=dtype)
    build_s = time.perf_counter() - start
    ids = torch.randint(3, 32000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def forward() -> float:
        with torch.inference_mode():
            return float(model(**batch_).loss.float())

    out: dict[str, Any] = {"build_s": build_s, "params": sum(p.numel() for p in model.parameters())}
    if phase == "adam":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        start = time.perf_counter()
        loss = model(**batch_).loss
        loss.backward()
        opt.step()
        out["step_s"] = time.perf_counter() - start
    else:
        forward()  # warm-up
        start = time.perf_counter()
        out["loss"] = forward()
        out["forward_s"] = time.perf_counter() - start
        if phase == "zo":
            params = list(model.named_parameters())
            start = time.perf_counter()
            result = zo_step(params, forward, seed=1, eps=1e-2, lr=1e-6)
            out["step_s"] = time.perf_counter() - start
            out["projected_grad"] = result.projected_grad
            # one round's replay: a log entry of REPLAY_SEEDS distinct seeds applied to every weight
            keys = np.arange(REPLAY_SEEDS, dtype=np.uint64)
            update = SeedUpdate(1, keys, candidate_seeds(0, 1024)[:REPLAY_SEEDS], np.full(REPLAY_SEEDS, 0.5, np.float32),
                                lr=1e-6)
            start = time.perf_counter()
            replay_(params, update)
            out["replay_s"] = time.perf_counter() - start
            out["replay_seeds"] = REPLAY_SEEDS
    out["peak_rss_bytes"] = _peak_rss_bytes()
    return out


def run_child(phase: str, args: argparse.Namespace, dtype: str, quantize: str = "none") -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", phase, "--size", args.size, "--dtype", dtype, "--quantize", quantize,
               "--batch", str(args.batch), "--tokens", str(args.tokens), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        return {"failed": True, "returncode": done.returncode, "tail": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_round() -> dict[str, float]:
    """simulations/tinyllama-1b.toml through ``fedtune run``, and the same on tiny-llama (3.2M)."""
    import tempfile

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedtune-big-") as tmp:
        for label, model in (("1b", "tinyllama-1.1b"), ("3m", "tiny-llama")):
            command = [sys.executable, "-m", "fedtune.cli", "run", str(ROOT / "simulations" / "tinyllama-1b.toml"),
                       "--set", f'output_dir="{tmp}"', "--set", f'name="{label}"', "--set", f'model.config="{model}"']
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                print(f"# round on {model} failed:\n{(done.stdout + done.stderr)[-2000:]}", flush=True)
                continue
            last = [json.loads(line) for line in (Path(tmp) / label / "metrics.jsonl").read_text().splitlines()][-1]
            for key in ("bytes_up_per_client", "bytes_down_per_client", "sync_mismatches", "replies"):
                print(f"round_{label}_{key}={last[key]}", flush=True)
            print(f"round_{label}_seconds={seconds:.1f}", flush=True)
            figures[f"round_{label}_bytes_up_per_client"] = float(last["bytes_up_per_client"])
    if len(figures) == 2:
        figures = {"round_bytes_up_1b_over_3m": figures["round_1b_bytes_up_per_client"]
                   / figures["round_3m_bytes_up_per_client"]}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--phases", default="inference,zo,adam")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--round", action="store_true",
                        help="also run one FedKSeed round on the model (simulations/tinyllama-1b.toml) beside tiny-llama")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--quantize", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--lora", default="float32:none,float32:nf4,float32:int8,bfloat16:none",
                        help="the lora phase's dtype:quantize bases")
    args = parser.parse_args()
    if args.child == "lora":
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(lora_child(args.size, args.dtype, args.quantize, args.batch, args.tokens)))
        return
    if args.child:
        print(json.dumps(child(args.child, args.size, args.dtype, args.batch, args.tokens, args.threads)))
        return

    import torch

    print(f"bench/big_model.py: model={CONFIGS[args.size]} batch={args.batch}x{args.tokens} "
          f"threads={args.threads} torch={torch.__version__} cpu={platform.machine()} "
          f"available={_available_bytes() / 2**30:.1f}GiB", flush=True)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    phases = args.phases.split(",")
    for base in args.lora.split(",") if "lora" in phases else []:
        dtype, quantize = base.split(":")
        result = run_child("lora", args, dtype, quantize)
        results[("lora", base)] = result
        for key, value in result.items():
            if key != "tail":
                print(f"lora_{dtype}_{quantize}_{key}={value:.4g}" if isinstance(value, float)
                      else f"lora_{dtype}_{quantize}_{key}={value}", flush=True)
        if result.get("failed"):
            print(f"# lora {base} failed:\n{result['tail']}", flush=True)
    for dtype in args.dtypes.split(","):
        for phase in phases:
            if phase == "lora" or (phase == "adam" and dtype != "float32"):
                continue
            result = run_child(phase, args, dtype)
            results[(phase, dtype)] = result
            for key, value in result.items():
                if key != "tail":
                    print(f"{phase}_{dtype}_{key}={value:.4g}" if isinstance(value, float)
                          else f"{phase}_{dtype}_{key}={value}", flush=True)
            if result.get("failed"):
                print(f"# {phase} {dtype} failed:\n{result['tail']}", flush=True)

    def peak(phase: str, dtype: str) -> float | None:
        r = results.get((phase, dtype), {})
        if r.get("refused"):
            return float(r["estimate_bytes"])  # what it would need at least
        return r.get("peak_rss_bytes")

    figures: dict[str, float] = {}
    zo16, inf16, zo32, adam32 = peak("zo", "bfloat16"), peak("inference", "bfloat16"), peak("zo", "float32"), \
        peak("adam", "float32")
    if zo16 and inf16:
        figures["zo_peak_bf16_over_inference_peak_bf16"] = zo16 / inf16
    if zo16 and zo32:
        figures["zo_peak_bf16_over_zo_peak_fp32"] = zo16 / zo32
    if zo16 and adam32:
        figures["backprop_adam_peak_fp32_over_zo_peak_bf16"] = adam32 / zo16
        if results[("adam", "float32")].get("refused"):
            print("# backprop + AdamW in float32 refused: the figure uses its estimate (weights, gradients, "
                  "two moments), a lower bound", flush=True)
    lora32 = results.get(("lora", "float32:none"), {})
    for base, result in results.items():
        if base[0] == "lora" and base[1] != "float32:none" and "train_peak_rss_bytes" in result and lora32:
            label = base[1].replace("float32:", "").replace(":none", "").replace(":", "_")
            figures[f"lora_{label}_train_peak_over_lora_fp32"] = (result["train_peak_rss_bytes"]
                                                                    / lora32["train_peak_rss_bytes"])
            figures[f"lora_{label}_step_over_lora_fp32"] = result["step_s"] / lora32["step_s"]
    zo = results.get(("zo", "bfloat16"), {})
    if "step_s" in zo and "forward_s" in zo:
        figures["zo_step_over_two_forwards_bf16"] = zo["step_s"] / (2 * zo["forward_s"])
    if args.round:
        figures = {**one_round(), **figures}  # the headline stays last
    print("# goals: " + ", ".join(f"{name} {goal}" for name, goal in GOALS.items()), flush=True)
    for name, value in figures.items():
        print(f"{name}={value:.3f}", flush=True)


if __name__ == "__main__":
    main()
