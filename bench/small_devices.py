"""Devices smaller than the model: Offsite-Tuning (first- and zeroth-order) beside full-model FedIT.

Side by side in one run, on the same task (``news`` by default: fedtune's harder generated
task, where the frozen probe sits far below what fine-tuning reaches), the same config
(simulations/quality.toml: the real pretrained all-MiniLM-L6-v2 with the label-name head,
20 clients, 5 a round) and the same seeds:

* the frozen baselines on the same eval set: ``zero-shot`` and ``probe`` (bench/quality.py's);
* ``fedit``: full-model clients, PEFT LoRA (bench/quality.py's contender);
* ``offsite``: clients tune the adapter (first and last block and the head) first-order on a
  layer-dropped (``[offsite]`` defaults: 2 of the 4 middle blocks kept) and **distilled**
  emulator (the paper's method: ``fedtune emulator``'s defaults, 300 AdamW steps at 1e-4,
  batch 32, on the task's text drawn with another seed, built once per bench run before any
  contender, or ``--emulator DIR``); the owner's model is the adapter plugged into the full
  model (``eval_accuracy``), the emulator's own score beside it;
* ``offsite-layerdrop``: the same on the layer-dropped emulator, undistilled;
* ``offsite-zo``: the same adapter tuned by FedKSeed through the distilled emulator;
* ``offsite-top``: ``offsite`` with the adapter's top block alone (``offsite.bottom=0``; the
  emulator keeps 3 of the 5 blocks below it, distilled for that plan): no gradient flows
  into the emulator, so the device stores none of its activations;
* ``offsite-lora``: ``offsite`` with PEFT LoRA on the adapter blocks (``offsite.lora``, the
  paper's Offsite + LoRA) at FedIT's LoRA rate, on the default plan's distilled emulator: the
  uplink is the LoRA factors and the head, and AdamW keeps state for those alone;
* ``split-prompt`` when the algorithm is registered (SFPrompt).

For each: the accuracy of the model the owner ends with (mean ± std over seeds), bytes per
client per round up and down (the real Flower messages, metrics.jsonl; the emulator's one-time
download reported apart), wall seconds; and, measured once per client kind in fresh
processes, the **client's peak memory**: the high-water mark of the process's resident set
(``VmHWM``) during 5 local AdamW steps (``--memory-steps``) at the run's batch and sequence
length, minus the resident set after every import and before the model is loaded (memory-mapped from its file:
the frozen weights count as the pages the steps touch). Each client's model is built
in another process and handed over as a file, as a device would receive it, so the device
never holds the full model.

Prints ``name=value`` lines, the headline last: ``offsite_plugin_minus_fedit_accuracy``
(accuracy points, distilled emulator; goal >= -2), after
``offsite_device_peak_over_full_client_peak`` (goal <= 0.35; the full client is FedIT's) and
the same ratio for ``offsite-top``; beside them, each Offsite client's peak over a client that
fine-tunes all the full model's weights (``full_ft``: the paper's baseline for its 5.6x).

    python bench/small_devices.py                        # news, 3 seeds, 4 rounds: ~65 min on 2 cores
    python bench/small_devices.py --quick                # a smoke test: 1 seed, 1 round, small data
    python bench/small_devices.py --memory-only          # the memory figures alone (a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch

from fedtune import algorithms
from fedtune.config import RunConfig, load_config

# The learning rates, fixed before any seed of this bench ran (nothing tuned on its results):
# FedIT keeps bench/quality.py's (LoRA, AdamW 1e-3). Offsite tunes whole transformer blocks with
# AdamW: 1e-4, the upper end of the usual rates for fine-tuning BERT-sized blocks (2e-5..1e-4),
# since the head is in the adapter and must move in few steps. Offsite-ZO tunes ~3.6M weights by
# FedKSeed: lr 1e-5, eps 1e-3, the largest of MeZO's full-parameter grid (1e-7..1e-5 at eps 1e-3).
# Split-prompt steps its soft prompt by SGD at 0.3, prompt tuning's usual rate (Lester et al. 2021).
# The distilled emulator: `fedtune emulator`'s defaults (tried once, central, seed 0, before this
# bench used it: the adapter plugged in reached 95.5 % undistilled, 99.8 % distilled).
DISTILLED = "offsite.emulator={emulator}"  # filled in with the directory the bench distils once
CONTENDERS: dict[str, list[str]] = {
    "fedit": ["algorithm.name=fedit"],
    "offsite": ["algorithm.name=offsite", "algorithm.lr=1e-4", DISTILLED],
    "offsite-layerdrop": ["algorithm.name=offsite", "algorithm.lr=1e-4"],
    "offsite-zo": ["algorithm.name=offsite-zo", "algorithm.lr=1e-5", "algorithm.eps=1e-3", DISTILLED],
    # the adapter is the top block alone: no gradient crosses the emulator, so the device keeps
    # none of its activations (its own distilled emulator: the plan has other middle blocks)
    "offsite-top": ["algorithm.name=offsite", "algorithm.lr=1e-4", "offsite.bottom=0", DISTILLED],
    # the paper's Offsite + LoRA: LoRA on the default plan's adapter blocks, at FedIT's LoRA rate (1e-3)
    "offsite-lora": ["algorithm.name=offsite", "offsite.lora=true", "algorithm.lr=1e-3", DISTILLED],
    "split-prompt": ["algorithm.name=split-prompt", "algorithm.lr=0.3"],
}
# the client kinds whose memory is measured, by their overrides: the contenders' clients (a
# distilled emulator has the layer-drop's shapes), and the paper's own baseline beside them, a
# client that fine-tunes every weight of the full model (AdamW, Offsite's rate)
MEMORY_KINDS: dict[str, list[str]] = {
    **{kind: [s for s in CONTENDERS[kind] if s != DISTILLED] for kind in ("fedit", "offsite", "offsite-top", "offsite-lora")},
    "full-ft": ["algorithm.name=fedit", 'model.trainable=["*"]', "algorithm.lr=1e-4"],
}
MEMORY_STEPS = 5  # default; AdamW's state exists from the first step, so 2 already reach the peak


def _rss_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def prepare_client(cfg: RunConfig, out: Path) -> None:
    """Build the client's model as a client of ``cfg``'s run builds it and save it (the whole
    module, pickled) with one training batch: what the measuring process loads."""
    from fedtune.data.batches import sample_batch
    from fedtune.lora.weights import trained_model
    from fedtune.workload import Workload

    workload = Workload(cfg)
    model, params = trained_model(workload, cfg, client=True)
    encoded = workload.encode(workload.examples[0][: 4 * cfg.algorithm.batch_size])
    batch = sample_batch(encoded, cfg.algorithm.batch_size, seed=0, step=0)
    trained = {id(p) for p in params.values()}
    indices = [i for i, p in enumerate(model.parameters()) if id(p) in trained]  # survives the pickling
    torch.save({"model": model, "trained": indices, "batch": batch}, out)


def measure_client(path: Path, lr: float, steps: int = MEMORY_STEPS) -> dict[str, float]:
    """Load a prepared client and take ``steps`` AdamW steps; its memory in MB."""
    import peft  # noqa: F401  (every module the unpickling needs, imported before the baseline)
    import transformers.models.bert.modeling_bert
    import transformers.models.llama.modeling_llama  # noqa: F401

    import fedtune.lora.adapters
    import fedtune.models  # noqa: F401
    from fedtune.lora.train import local_train

    base = _rss_kib("VmRSS")
    saved = torch.load(path, weights_only=False, mmap=True)  # weights paged in from the file, no second copy
    model, batch = saved["model"], saved["batch"]
    everything = list(model.parameters())
    params = [everything[i] for i in saved["trained"]]
    loaded = _rss_kib("VmRSS")
    local_train(model, params, lambda step: batch, steps, optimizer="adamw", lr=lr, weight_decay=0.0,
                device=torch.device("cpu"))
    peak = _rss_kib("VmHWM")
    return {
        "peak_mb": (peak - base) / 1024,
        "weights_mb": (loaded - base) / 1024,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in params),
    }


def client_memory(config: Path, overrides: list[str], kind: str, steps: int = MEMORY_STEPS) -> dict[str, float]:
    """:func:`measure_client` of a ``kind`` client of ``config`` + ``overrides`` in fresh
    processes (built in one, measured in another)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.pt"
        sets = [a for s in overrides for a in ("--set", s)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        for step in (["--prepare-client", str(path)], ["--measure-client", str(path), "--memory-steps", str(steps)]):
            result = subprocess.run([sys.executable, __file__, "--config", str(config), *sets, *step],
                                    cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{kind} client memory ({step[0]}) failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def distil(cfg: RunConfig, out: Path, *, quick: bool, plan: tuple[str, ...]) -> str:
    """``fedtune emulator``'s defaults for ``cfg``'s plan, written to ``out``; its directory."""
    from fedtune.emulator_build import build_emulator

    start = time.perf_counter()
    done = build_emulator(cfg, str(out), steps=20 if quick else 300, lr=1e-4, batch_size=32)
    print(f"# distilled the emulator{' (' + ', '.join(plan) + ')' if plan else ''}: {done['steps']} steps on "
          f"{done['examples']} examples, loss {done['first_loss']:.5f} -> {done['last_loss']:.5f}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return str(out)


def _run(config: Path, out: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """One ``fedtune run`` (bench/quality.py's), plus the bytes down and the emulator's scores."""
    from quality import federated

    result = federated(config, out, name, overrides)
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    downs = [r.get("bytes_down_per_client", 0.0) for r in records if r["round"] > 0]
    result["bytes_down"] = statistics.fmean(downs) if downs else 0.0
    emulated = [r["emulator_eval_accuracy"] for r in records if r.get("emulator_eval_accuracy") is not None]
    result["emulator_accuracy"] = emulated[-1] if emulated else None
    result["emulator_bytes_once"] = records[0].get("emulator_bytes_down")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "simulations" / "quality.toml"))
    parser.add_argument("--task", default="news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", help="comma-separated contenders (default: all registered)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 round, small data: a smoke test")
    parser.add_argument("--memory-only", action="store_true", help="the client memory figures alone")
    parser.add_argument("--memory-steps", type=int, default=MEMORY_STEPS,
                        help="local AdamW steps a client's memory is measured over (>= 2: the first allocates AdamW's state)")
    parser.add_argument("--emulator", help="a distilled emulator `fedtune emulator` wrote for this config "
                                           "and task (default: distil one first, a few minutes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every contender, as `fedtune run --set` (repeatable)")
    parser.add_argument("--prepare-client", help=argparse.SUPPRESS)
    parser.add_argument("--measure-client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_steps < 2:
        parser.error(f"--memory-steps must be >= 2 (the first step allocates AdamW's state), got {args.memory_steps}")
    config = Path(args.config).resolve()
    os.chdir(ROOT)
    if args.prepare_client:
        prepare_client(load_config(config, args.set), Path(args.prepare_client))
        return
    if args.measure_client:
        cfg = load_config(config, args.set)
        print(json.dumps(measure_client(Path(args.measure_client), cfg.algorithm.lr, args.memory_steps)))
        return

    from quality import _mean_std, frozen_baselines, task_sets

    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    base = [f"rounds={1 if args.quick else args.rounds}", *task_sets(args.task), *args.set]
    if args.quick:
        base += ["data.eval_examples=200", "data.num_examples=400", "algorithm.local_steps=4"]
    names = args.only.split(",") if args.only else list(CONTENDERS)
    registered = set(algorithms.names())
    skipped = [n for n in names if CONTENDERS[n][0].split("=", 1)[1] not in registered]
    names = [n for n in names if n not in skipped]
    cfg0 = load_config(config, base)
    print(f"bench/small_devices.py: task={args.task} model={cfg0.model.path} rounds={cfg0.rounds} "
          f"clients={cfg0.federation.num_clients} per_round={cfg0.federation.clients_per_round} "
          f"local_steps={cfg0.algorithm.local_steps} batch={cfg0.algorithm.batch_size} "
          f"eval_examples={cfg0.data.eval_examples} seeds={seeds} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}" + (f" (not registered, skipped: {skipped})" if skipped else ""),
          flush=True)

    memory = {kind: client_memory(config, [*base, *sets], kind, args.memory_steps) for kind, sets in MEMORY_KINDS.items()}
    for kind, m in memory.items():
        key = kind.replace("-", "_")
        print(f"{key}_client_peak_mb={m['peak_mb']:.1f}")
        print(f"{key}_client_weights_mb={m['weights_mb']:.1f}")
        print(f"{key}_client_parameters={m['parameters']}")
        print(f"{key}_client_trained_parameters={m['trained_parameters']}")
    for kind in ("offsite", "offsite-top", "offsite-lora"):  # the paper's comparison: against full fine-tuning
        print(f"{kind.replace('-', '_')}_device_peak_over_full_ft_client_peak="
              f"{memory[kind]['peak_mb'] / memory['full-ft']['peak_mb']:.3f}")
    # against FedIT's client (the goal), printed last, the default plan's last of all
    fedit_ratios = [f"{kind.replace('-', '_')}_device_peak_over_full_client_peak="
                    f"{memory[kind]['peak_mb'] / memory['fedit']['peak_mb']:.3f}"
                    for kind in ("offsite-top", "offsite-lora", "offsite")]
    if args.memory_only:
        print(*fedit_ratios, sep="\n")
        return

    results: dict[str, list[dict[str, Any]]] = {n: [] for n in ["zero-shot", "probe", *names]}
    with tempfile.TemporaryDirectory() as tmp:
        # one distilled emulator per plan (a contender's other `offsite.*` keys), distilled once,
        # before any contender runs; --emulator gives the default plan's
        emulators: dict[tuple[str, ...], str] = {(): args.emulator} if args.emulator else {}
        filled = {}
        for n in names:
            # the emulator's plan: the block keys (offsite.lora changes what is tuned, not the emulator)
            plan = tuple(s for s in CONTENDERS[n]
                         if s.startswith("offsite.") and s != DISTILLED and not s.startswith("offsite.lora="))
            if DISTILLED in CONTENDERS[n] and plan not in emulators:
                cfg = load_config(config, [*base, "algorithm.name=offsite", *plan])
                emulators[plan] = distil(cfg, Path(tmp) / f"emulator-{len(emulators)}", quick=args.quick, plan=plan)
            filled[n] = [s.format(emulator=f'"{emulators[plan]}"') if s == DISTILLED else s for s in CONTENDERS[n]]
        for seed in seeds:
            frozen = frozen_baselines(load_config(config, [*base, f"seed={seed}"]))
            for key in ("zero-shot", "probe"):
                results[key].append({"accuracy": frozen[key]})
            for name in names:
                start = time.perf_counter()
                result = _run(config, Path(tmp), f"{name}-{seed}", [*base, f"seed={seed}", *filled[name]])
                results[name].append(result)
                print(f"# seed {seed} {name}: accuracy {result['accuracy']:.4f}"
                      + (f" (emulator {result['emulator_accuracy']:.4f})" if result["emulator_accuracy"] else "")
                      + f", {time.perf_counter() - start:.0f} s", flush=True)

    for name, runs in results.items():
        mean, std = _mean_std([r["accuracy"] for r in runs])
        print(f"{name}_accuracy={100 * mean:.2f}")
        print(f"{name}_accuracy_std={100 * std:.2f}")
        if "bytes_up" in runs[0]:
            print(f"{name}_bytes_up_per_client_round={statistics.fmean(r['bytes_up'] for r in runs):.0f}")
            print(f"{name}_bytes_down_per_client_round={statistics.fmean(r['bytes_down'] for r in runs):.0f}")
            print(f"{name}_seconds={statistics.fmean(r['seconds'] for r in runs):.0f}")
        if runs[0].get("emulator_accuracy") is not None:
            print(f"{name}_emulator_accuracy={100 * statistics.fmean(r['emulator_accuracy'] for r in runs):.2f}")
            print(f"{name}_emulator_bytes_once={runs[0]['emulator_bytes_once']}")
    fedit = statistics.fmean(r["accuracy"] for r in results["fedit"])
    probe = statistics.fmean(r["accuracy"] for r in results["probe"])
    for name in names:
        if name != "fedit":
            print(f"{name.replace('-', '_')}_minus_fedit_accuracy={100 * (statistics.fmean(r['accuracy'] for r in results[name]) - fedit):.2f}")
            print(f"{name.replace('-', '_')}_minus_probe_accuracy={100 * (statistics.fmean(r['accuracy'] for r in results[name]) - probe):.2f}")
    print(*fedit_ratios, sep="\n")
    if "offsite" in results:  # the headline needs the default plan's run (--only may leave it out)
        offsite = statistics.fmean(r["accuracy"] for r in results["offsite"])
        print(f"offsite_plugin_minus_fedit_accuracy={100 * (offsite - fedit):.2f}")


if __name__ == "__main__":
    main()
