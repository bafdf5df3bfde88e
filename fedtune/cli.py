"""``fedtune``: run an experiment in Flower's simulation engine, or plot a finished run.

    fedtune run [simulations/default.toml] [--set algorithm.lr=1e-4 ...]
    fedtune plot runs/default
    fedtune data write-dolly DIR [--num-examples N] [--seed S]

Exit status: 0 on success, 2 on bad input (config, paths, names; nothing is written under
runs/), 1 when the run itself fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import tomllib

from fedtune import algorithms
from fedtune.config import ConfigError, RunConfig, config_to_dict, load_config
from fedtune.runs import configure_logging, read_records

log = logging.getLogger("fedtune")

DEFAULT_CONFIG = "simulations/default.toml"


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


def _find_app_dir(explicit: str | None) -> Path:
    """The Flower App directory: ``--app-dir``, else the working directory, else the repo
    that holds this (editable) installation."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for directory in candidates:
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            with open(pyproject, "rb") as f:
                if "app" in tomllib.load(f).get("tool", {}).get("flwr", {}):
                    return directory.resolve()
    raise UsageError(
        f"no Flower App found (a pyproject.toml with [tool.flwr.app]) in "
        f"{', '.join(str(c) for c in candidates)}; run from the fedtune checkout or pass --app-dir"
    )


def _check_environment(cfg: RunConfig) -> None:
    """What the config names must exist: the model, its path, the data file."""
    from fedtune import models

    m = cfg.model
    if m.config and m.config not in models.config_names():
        raise UsageError(
            f"unknown model.config {m.config!r}; known configs: {', '.join(models.config_names())}"
        )
    try:
        model_dir = models.resolve_model_path(m.path) if m.path else ""
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if m.path and not (Path(model_dir) / "config.json").is_file():
        raise UsageError(
            f"model.path {m.path!r} is not a local Hugging Face model directory "
            "(expected config.json and weights there; fedtune never downloads)"
        )
    d = cfg.data
    if d.source in ("jsonl", "csv") and not Path(d.path).is_file():
        raise UsageError(f"data.path {d.path!r} does not exist")
    for key, path in (("path", d.path), ("eval_path", d.eval_path)):
        if d.source == "file" and path and not Path(path).exists():
            raise UsageError(f"data.{key} {path!r} does not exist; give a local dataset (fedtune never "
                             "reads a hub id): a save_to_disk directory or a .parquet/.json/.jsonl/.csv file")
    if cfg.log.tensorboard:
        from fedtune.runs import TENSORBOARD_MISSING, tensorboard_available

        if not tensorboard_available():
            raise UsageError(TENSORBOARD_MISSING)
    if "rougeL" in cfg.eval.metrics and importlib.util.find_spec("rouge_score") is None:
        raise UsageError("`eval.metrics` = rougeL needs the rouge-score package: pip install 'fedtune[torch]' "
                         "(or pip install rouge-score)")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"device = {cfg.device!r} but CUDA is not available; use auto or cpu")
    _check_dtype(cfg)


def _check_dtype(cfg: RunConfig) -> None:
    """A 16-bit ``model.dtype`` the device cannot compute (a CPU torch build without float16
    matmuls, bfloat16 on a GPU older than Ampere, no ``ml_dtypes`` for the numpy side): one
    line, before anything starts. Measured by running what a client runs: a linear layer's
    forward and backward under autocast, and one canonical update."""
    if cfg.model.dtype == "float32":
        return
    import torch

    from fedtune.dtypes import autocast, numpy_dtype, torch_dtype
    from fedtune.rng.torch_backend import add_scaled_
    from fedtune.workload import pick_device

    device, dtype = pick_device(cfg.device), torch_dtype(cfg.model.dtype)
    try:
        numpy_dtype(cfg.model.dtype)
        layer = torch.nn.Linear(8, 8).to(device, dtype)
        with autocast(device, cfg.model.dtype):
            layer(torch.ones(2, 8, device=device, dtype=dtype)).float().sum().backward()
        add_scaled_(layer.weight.data, 0, "check", 1e-2)
    except (RuntimeError, TypeError, ImportError) as exc:
        raise UsageError(f"`model.dtype` = {cfg.model.dtype!r} cannot run on {device} here "
                         f"({str(exc).splitlines()[0]}); use model.dtype = 'float32'") from None


def _check_model(cfg: RunConfig) -> None:
    """Build what a config's head and trainable subset need, once, before anything is written.

    Label names that do not fit the data, a ``model.trainable`` pattern that matches nothing,
    LoRA target modules the model lacks and an algorithm's own model checks
    (:attr:`fedtune.algorithms.Algorithm.check_model`: a split layer outside the model) all
    surface here as one line (exit 2) rather than inside the ServerApp. Only configs that use these features pay the model build.
    """
    from fedtune.workload import Workload

    m, a = cfg.model, cfg.algorithm
    spec = algorithms.get(a.name)
    zo = spec.family == "zo"
    emulated = spec.client_model is not None  # Offsite-Tuning: the emulator's plan must fit the model
    checked = spec.check_model is not None  # the algorithm's own checks of the built model (split-prompt)
    if m.head == "default" and a.params == "model" and not (zo and m.trainable) and not emulated and not checked:
        return
    try:
        workload = Workload(cfg)
        if m.head == "label-names":
            workload.label_names  # noqa: B018 (raises on names that do not fit the data)
        if spec.check_model is not None:
            errors = spec.check_model(cfg, workload.build_model())
            if errors:
                raise ValueError("; ".join(errors))
        if emulated:
            workload.trainable(workload.build_model(client=True))
        elif zo and (m.trainable or a.params == "lora" or m.head != "default"):
            workload.trainable(workload.build_model())
    except ValueError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None


def _check_data(cfg: RunConfig) -> None:
    """Read a ``data.source = "file"`` dataset and split it, once, before anything is written.

    Columns the template or ``data.fields`` need, ``data.partition_field``'s distinct values
    against the clients, a client or a held-out set left empty and a tokenizer without the
    chat template ``data.template = "chat"`` asks for all surface here as one line (exit 2),
    not inside the ServerApp.
    """
    from fedtune.workload import Workload

    d = cfg.data
    if d.source != "file":
        return
    try:
        workload = Workload(cfg)
        train, held_out = workload.examples
        if not held_out:
            raise ValueError(f"no held-out example of {d.eval_path or d.path!r} can be encoded; give "
                             "data.eval_path more rows or raise data.max_length")
        num_clients = cfg.federation.num_clients
        if len(train) < num_clients:
            raise ValueError(f"`data.path` {d.path!r} leaves {len(train)} training examples for "
                             f"federation.num_clients = {num_clients}; some clients would hold none: use "
                             "fewer clients or more data")
        sizes = [len(part) for part in workload.partitions(num_clients)]
        empty = [k for k, n in enumerate(sizes) if n == 0]
        if empty:
            raise ValueError(f"`data.partition` = {d.partition!r} leaves {len(empty)} of {num_clients} clients "
                             f"(first: {empty[0]}) with no training examples; use fewer clients or another "
                             "partition (a larger data.alpha, iid)")
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None


def _check_memory(cfg: RunConfig) -> Any:
    """Refuse, before anything starts, a simulation this machine cannot hold."""
    from fedtune.capacity import available_memory, estimate_memory, parameter_count

    memory = estimate_memory(cfg, parameter_count(cfg), os.cpu_count() or 1, available_memory())
    if not memory.fits and cfg.simulation.ray_address:  # the cluster's machines hold the workers: unknown here
        log.warning("this machine alone could not hold the simulation (%s); going on, as the Ray cluster at %s "
                    "places the workers on its machines", memory.describe(), cfg.simulation.ray_address)
        return memory
    if not memory.fits:
        raise UsageError(
            f"this simulation needs {memory.describe()}. Run fewer clients at once (lower "
            "`simulation.num_cpus`, raise `simulation.num_cpus_per_client` or lower "
            "`federation.clients_per_round`) or use a smaller model"
        )
    return memory


def _load_component(app_dir: Path, ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    return getattr(importlib.import_module(module_name), attr)


def _resume_config(run_dir: Path, config_path: Path | None, overrides: list[str]) -> RunConfig:
    """The config of the run to resume; a config given beside it must resolve the same."""
    from fedtune.runs import CONFIG_FILE

    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a fedtune run directory?")
    cfg = load_config(run_dir / CONFIG_FILE)
    if config_path is not None:
        given = load_config(config_path, overrides)
        if given != cfg:
            differ = [k for k, v in config_to_dict(given).items() if config_to_dict(cfg)[k] != v]
            raise UsageError(
                f"--resume {run_dir}: {config_path} does not resolve to the run's config "
                f"(sections that differ: {', '.join(differ)}); resume with the run's own config"
            )
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    app_dir = _find_app_dir(args.app_dir)
    config_path = Path(args.config) if args.config else app_dir / DEFAULT_CONFIG
    try:
        if args.resume:
            cfg = _resume_config(Path(args.resume), Path(args.config) if args.config else None, args.set or [])
        else:
            cfg = load_config(config_path, args.set or [])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ConfigError as exc:
        raise UsageError(f"{config_path}: {exc}") from None
    if args.resume and "resume" not in algorithms.get(cfg.algorithm.name).features:
        raise UsageError(f"--resume is not supported for algorithm {cfg.algorithm.name!r} (it keeps no seed log "
                         f"to continue from; those that do: {', '.join(algorithms.supporting('resume'))}): "
                         "start a new run")
    _check_environment(cfg)
    _check_data(cfg)
    _check_model(cfg)
    memory = _check_memory(cfg)

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    configure_logging(args.verbose)
    log.info("memory: %s", memory.describe())

    from fedtune.runs import CONFIG_FILE, create_run_dir

    with open(app_dir / "pyproject.toml", "rb") as f:
        components = tomllib.load(f)["tool"]["flwr"]["app"]["components"]
    server_app = _load_component(app_dir, components["serverapp"])
    client_app = _load_component(app_dir, components["clientapp"])

    if args.resume:
        run_dir = Path(args.resume)
        log.info("fedtune run --resume %s", run_dir)
    else:
        run_dir = create_run_dir(cfg)
        log.info("fedtune run %s -> %s", config_path, run_dir)
    # the apps get the run through Flower's run config, as under `flwr run`: the resolved
    # config.toml of the run directory (no overrides left to apply), the directory, resume
    run_config = {"config": str((run_dir / CONFIG_FILE).resolve()), "set": "", "run-dir": str(run_dir.resolve()),
                  "resume": bool(args.resume)}

    from fedtune._flwr_compat import run_simulation

    s = cfg.simulation
    resources: dict[str, Any] = {"num_cpus": s.num_cpus_per_client}
    if s.num_gpus_per_client:
        resources["num_gpus"] = s.num_gpus_per_client
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True, "include_dashboard": False}
    if s.ray_address:  # a running cluster: its machines' CPUs and GPUs, the config refuses num_cpus/num_gpus
        init_args["address"] = s.ray_address
        log.info("joining the Ray cluster at %s", s.ray_address)
    if s.num_cpus:
        init_args["num_cpus"] = s.num_cpus
    if s.num_gpus:
        init_args["num_gpus"] = s.num_gpus
    backend_config: dict[str, Any] = {"client_resources": resources, "init_args": init_args}
    run_simulation(
        server_app,
        client_app,
        num_supernodes=cfg.federation.simulated_nodes,
        backend_config=backend_config,
        app_dir=str(app_dir),
        run_config=run_config,
        verbose_logging=args.verbose,
    )
    records = read_records(run_dir)
    evals = [r for r in records if r.get("eval_loss") is not None]
    if not records or records[-1].get("round") != cfg.rounds:
        log.error("the run stopped before round %d; see the log above", cfg.rounds)
        return 1
    trained = [r for r in records if r.get("round", 0) > 0]
    if trained and not any(r.get("replies") for r in trained):
        log.error("no client update was aggregated in any of the %d rounds (every client failed or was "
                  "rejected); the model is the initial one. See the log above", cfg.rounds)
        return 1
    if evals:
        log.info(
            "done: eval loss %.4f -> %.4f over %d rounds; results in %s",
            evals[0]["eval_loss"], evals[-1]["eval_loss"], cfg.rounds, run_dir,
        )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fedtune.plot import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in paths:
        print(path)
    return 0


def cmd_write_dolly(args: argparse.Namespace) -> int:
    from fedtune.data.hf import write_dolly

    if args.num_examples < 1:
        raise UsageError(f"--num-examples must be >= 1, got {args.num_examples}")
    try:
        out = write_dolly(args.directory, args.num_examples, args.seed)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from None
    print(out)
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from fedtune.emulator import EMULATOR_META
    from fedtune.emulator_build import build_emulator

    config_path = Path(args.config) if args.config else _find_app_dir(None) / DEFAULT_CONFIG
    out = Path(args.out)
    if (out / EMULATOR_META).exists():
        raise UsageError(f"--out {out} already holds an emulator: give a new directory")
    try:  # the emulator is built, not read: a config's own offsite.emulator is ignored
        cfg = load_config(config_path, [*(args.set or []), 'offsite.emulator=""'])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ConfigError as exc:
        raise UsageError(f"{config_path}: {exc}") from None
    configure_logging(False)
    try:
        done = build_emulator(cfg, out, steps=args.steps, lr=args.lr, batch_size=args.batch_size, data=args.data)
    except ValueError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    if done["steps"]:
        log.info("distilled %d steps on %d examples: loss %.5f -> %.5f", done["steps"], done["examples"],
                 done["first_loss"], done["last_loss"])
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment in Flower's simulation engine")
    run.add_argument("config", nargs="?", help=f"experiment TOML (default: {DEFAULT_CONFIG})")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key, e.g. --set algorithm.lr=1e-4 (repeatable)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its seed log and checkpoints")
    run.add_argument("--app-dir", help="the Flower App directory (default: the working directory)")
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    run.set_defaults(func=cmd_run)
    plot = sub.add_parser("plot", help="write PNG curves of a run's metrics")
    plot.add_argument("run_dir", help="a run directory, e.g. runs/default")
    plot.add_argument("--out", help="where to write the PNGs (default: the run directory)")
    plot.set_defaults(func=cmd_plot)
    emulator = sub.add_parser(
        "emulator",
        help="build (and distill) the Offsite-Tuning emulator a config's [offsite] plans, for offsite.emulator",
    )
    emulator.add_argument("config", nargs="?", help=f"experiment TOML (default: {DEFAULT_CONFIG})")
    emulator.add_argument("--out", required=True, help="a new directory for emulator.safetensors and emulator.json")
    emulator.add_argument("--steps", type=int, default=300,
                          help="distillation steps (default: 300; 0 writes the layer-dropped emulator undistilled)")
    emulator.add_argument("--lr", type=float, default=1e-4, help="distillation AdamW learning rate (default: 1e-4)")
    emulator.add_argument("--batch-size", type=int, default=32, help="distillation batch size (default: 32)")
    emulator.add_argument("--data", default="",
                          help="the owner's own text for a file source, in the run's [data] format "
                               "(a generated source is drawn again with another seed)")
    emulator.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    emulator.set_defaults(func=cmd_emulator)
    data = sub.add_parser("data", help="write datasets for experiments")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dolly = data_sub.add_parser(
        "write-dolly",
        help="write the generated instruction task in the Dolly format (instruction, context, response, "
             "category) with datasets' save_to_disk, for data.source = 'file', data.template = 'dolly'",
    )
    dolly.add_argument("directory", help="a new (or empty) directory")
    dolly.add_argument("--num-examples", type=int, default=1000, help="rows to write (default: 1000)")
    dolly.add_argument("--seed", type=int, default=0, help="the generator's seed (default: 0)")
    dolly.set_defaults(func=cmd_write_dolly)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
