"""A run's directory: resolved config, per-round metrics, final weights, progress lines.

``runs/<name>/`` holds ``config.toml`` (the fully resolved config, re-runnable as is),
``metrics.jsonl`` (one JSON object per round, appended and fsync'ed as each round ends, so a
crash loses no finished round), with ``log.tensorboard`` the same numbers as TensorBoard
event files under ``tensorboard/``, and ``model/`` (the final weights as safetensors in the
Hugging Face layout, with the tokenizer: :func:`fedtune.workload.save_model`).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedtune.config import RunConfig, dump_toml, load_config

__all__ = [
    "ENV_CONFIG",
    "ENV_RESUME",
    "ENV_RUN_DIR",
    "RunWriter",
    "atomic_write",
    "config_from_run_config",
    "create_run_dir",
    "format_bytes",
    "progress_line",
    "resuming",
]

log = logging.getLogger(__name__)

ENV_CONFIG = "FEDTUNE_CONFIG"  # set by `fedtune run`: the resolved config.toml of the run
ENV_RUN_DIR = "FEDTUNE_RUN_DIR"  # set by `fedtune run`: the run directory it created
ENV_RESUME = "FEDTUNE_RESUME"  # set to 1 by `fedtune run --resume`: continue the run in ENV_RUN_DIR

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"
MODEL_DIR = "model"
TENSORBOARD_DIR = "tensorboard"


_LOGGERS = ("fedtune",)  # the library, its apps included


def configure_logging(verbose: bool = False) -> None:
    """Print fedtune's INFO lines (the progress line) to stdout, once per process.

    Used by ``fedtune run`` and by the ServerApp under ``flwr run``, where Flower streams
    the process's output back to the user. Unless ``verbose``, Flower's own logs are cut
    to warnings.
    """
    if logging.getLogger(_LOGGERS[0]).handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if not verbose:
        flwr_log = logging.getLogger("flwr")
        flwr_log.setLevel(logging.WARNING)
        # fedtune calls run_simulation on purpose (it keeps the run in this process, with
        # its exit status); Flower's deprecation notice for it would only confuse users.
        flwr_log.addFilter(lambda record: "DEPRECATED FEATURE" not in record.getMessage())


def create_run_dir(cfg: RunConfig, base: str | os.PathLike[str] | None = None) -> Path:
    """Create ``<output_dir>/<name>`` (``<name>-2``, ``-3``... if taken) with ``config.toml``.

    Call only once the config is fully validated: nothing is written before.
    """
    root = Path(base) if base is not None else Path.cwd()
    out = root / cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for suffix in range(1, 10_000):
        run_dir = out / (cfg.name if suffix == 1 else f"{cfg.name}-{suffix}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        atomic_write(run_dir / CONFIG_FILE, dump_toml(cfg))
        return run_dir
    raise RuntimeError(f"no free run directory name for {cfg.name!r} under {out}")


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` (fsync'ed): a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_from_run_config(run_config: Mapping[str, Any], app_dir: Path) -> tuple[RunConfig, Path | None]:
    """The run's config and run directory, for a Flower ServerApp/ClientApp.

    From the run config: ``config`` names the TOML file (relative to the working directory or
    the app directory), ``set`` holds space-separated ``key=value`` overrides, and
    ``run-dir`` the run directory ``fedtune run`` opened (it passes the resolved
    ``config.toml`` there and no overrides). Under ``flwr run .`` ``run-dir`` is empty and the
    ServerApp creates the directory (None here). Scripts that drive Flower's public
    ``run_simulation`` (no run config) may pass the same through :data:`ENV_CONFIG` and
    :data:`ENV_RUN_DIR` instead.
    """
    env_config = os.environ.get(ENV_CONFIG)
    if env_config and not run_config.get("config"):
        run_dir = os.environ.get(ENV_RUN_DIR)
        return _load_once(Path(env_config), ()), Path(run_dir) if run_dir else None
    name = str(run_config.get("config", ""))
    if not name:
        raise ValueError(
            "no experiment config: set `config` in [tool.flwr.app.config] (e.g. "
            '"simulations/default.toml") or run through `fedtune run`'
        )
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = app_dir / path
    overrides = shlex.split(str(run_config.get("set", "")))
    run_dir = str(run_config.get("run-dir", ""))
    return _load_once(path, tuple(overrides)), Path(run_dir) if run_dir else None


def _load_once(path: Path, overrides: tuple[str, ...]) -> RunConfig:
    """:func:`load_config`, parsed once per process and file version (a ClientApp is called
    for every train message; the file does not change within a run)."""
    try:
        stat = path.stat()
    except OSError:
        return load_config(path, overrides)  # the clear FileNotFoundError
    return _parsed(str(path.resolve()), stat.st_mtime_ns, stat.st_size, overrides)


@functools.lru_cache(maxsize=8)
def _parsed(path: str, mtime_ns: int, size: int, overrides: tuple[str, ...]) -> RunConfig:
    return load_config(path, overrides)


def resuming(run_config: Mapping[str, Any]) -> bool:
    """Whether this run continues an interrupted one (``fedtune run --resume``): the run
    config's ``resume``, or :data:`ENV_RESUME` for scripts without a run config."""
    if run_config.get("config"):
        return bool(run_config.get("resume", False))
    return os.environ.get(ENV_RESUME) == "1"


def format_bytes(num: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    raise AssertionError("unreachable")


def progress_line(record: Mapping[str, Any], rounds: int) -> str:
    """One line per round: ``round 3/20: train loss 2.31, eval loss 2.20, ...``."""
    parts = [f"round {record['round']}/{rounds}:"]
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f},")
    parts += eval_parts(record)
    before, after = record.get("bias_before"), record.get("bias_after")  # federated LoRA's aggregation bias
    if before is not None and after is not None and math.isfinite(before) and math.isfinite(after):
        parts.append(f"bias {before:.3f} -> {after:.3f},")
    if "bytes_up_per_client" in record:
        parts.append(
            f"up {format_bytes(record['bytes_up_per_client'])}/client, "
            f"down {format_bytes(record['bytes_down_per_client'])}/client,"
        )
    if "replies" in record:
        parts.append(f"{record['replies']}/{record['sampled']} replied,")
    if "secagg_sum" in record:  # privacy.secagg: whether the protocol formed a sum, who dropped where
        parts.append(_secagg_words(record))
    if "dp_epsilon" in record:  # privacy.dp: the budget spent so far
        eps = record["dp_epsilon"]
        parts.append(f"epsilon {eps:.3g} at delta {record['dp_delta']:g}," if eps is not None else "epsilon inf,")
    if record.get("diverging"):
        parts.append(f"DIVERGING ({record['diverging']}),")
    timing = f"{record['round_s']:.1f} s (total {format_duration(record['elapsed_s'])}"
    if record.get("eta_s"):
        timing += f", ETA {format_duration(record['eta_s'])}"
    parts.append(timing + ")")
    return " ".join(parts)


def _secagg_words(record: Mapping[str, Any]) -> str:
    """The progress line's SecAgg+ words: ``SecAgg+ sum (dropped 1 at setup),`` or
    ``SecAgg+ HALTED, no sum (dropped 2 at share-keys),`` (the clients that stopped answering
    at each stage; none: no parenthesis)."""
    drops = [f"{record[f'secagg_dropped_{stage}']} at {stage.replace('_', '-')}"
             for stage in ("setup", "share_keys", "collect", "unmask") if record.get(f"secagg_dropped_{stage}")]
    dropped = f" (dropped {', '.join(drops)})" if drops else ""
    return ("SecAgg+ sum" if record["secagg_sum"] else "SecAgg+ HALTED, no sum") + dropped + ","


# The scores besides loss and accuracy, as the progress line names them (eval.metrics).
_SCORE_LABELS = (("eval_macro_f1", "macro-F1"), ("eval_rougeL", "rougeL"), ("eval_exact_match", "EM"))


def eval_parts(record: Mapping[str, Any]) -> list[str]:
    """The progress line's evaluation words, each ending in a comma:
    ``eval loss 2.2000 (acc 0.125), rougeL 0.412, EM 0.100, generation 3.1 s,`` and, with
    federated evaluation, ``fed eval loss 2.3100 (acc 0.118, clients 0.050-0.200, 3 clients, 41 examples),``
    (the weighted mean, then the lowest and highest client's own accuracy)."""
    parts: list[str] = []
    loss, accuracy = record.get("eval_loss"), record.get("eval_accuracy")
    if loss is not None:
        parts.append(f"eval loss {loss:.4f}" + (f" (acc {accuracy:.3f})," if accuracy is not None else ","))
    elif accuracy is not None:
        parts.append(f"eval acc {accuracy:.3f},")
    parts += [f"{label} {record[key]:.3f}," for key, label in _SCORE_LABELS if record.get(key) is not None]
    if record.get("emulator_eval_accuracy") is not None:  # Offsite-Tuning: eval_* is the plugged-in full model
        parts.append(f"emulator acc {record['emulator_eval_accuracy']:.3f},")
    if record.get("eval_generate_seconds") is not None:
        parts.append(f"generation {record['eval_generate_seconds']:.1f} s,")
    if "fed_eval_clients" in record:  # eval.federated: the clients' scores on their own data
        fed_loss, fed_accuracy = record.get("fed_eval_loss"), record.get("fed_eval_accuracy")
        on = f"{record['fed_eval_clients']} clients, {record['fed_eval_examples']} examples"
        if fed_loss is None or not math.isfinite(fed_loss):
            parts.append(f"fed eval loss {fed_loss if fed_loss is not None else 'none'} ({on}),")
        else:
            acc = f"acc {fed_accuracy:.3f}, " if fed_accuracy is not None and math.isfinite(fed_accuracy) else ""
            low, high = record.get("fed_eval_accuracy_min"), record.get("fed_eval_accuracy_max")
            if acc and low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                acc = f"acc {fed_accuracy:.3f}, clients {low:.3f}-{high:.3f}, "
            parts.append(f"fed eval loss {fed_loss:.4f} ({acc}{on}),")
    return parts


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``; under a minute, whole seconds."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir``'s metrics.jsonl, in order; none if it does not exist.

    A torn line (a process killed while writing it) is skipped with a warning, so a
    crashed run's history reads up to its last whole round.
    """
    return [record for _, record in _metrics_lines(Path(run_dir) / METRICS_FILE)]


def _metrics_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line of ``path`` with its record; a torn line skipped with a warning."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line", path)


class RunWriter:
    """Appends per-round records to ``metrics.jsonl`` and prints the progress line.

    A record whose losses went non-finite, or whose eval loss rose ``diverge_after``
    evaluations in a row, is marked ``"diverging": "<why>"`` in both: a diverging run says
    so instead of silently training on.
    """

    def __init__(self, run_dir: Path, rounds: int, *, diverge_after: int = 3) -> None:
        self.run_dir = Path(run_dir)
        self.rounds = rounds
        self.metrics_path = self.run_dir / METRICS_FILE
        self.diverge_after = diverge_after
        self._eval_losses: list[float] = []
        self.tracker: TensorBoardTracker | None = None

    def track(self, cfg: RunConfig, *, resumed: bool = False) -> None:
        """With ``log.tensorboard``, also write every record to TensorBoard (see
        :class:`TensorBoardTracker`). On a ``resumed`` run (call :meth:`truncate_after`
        first) the rounds after round 0 are written again from metrics.jsonl as it stands:
        a kill between a record's line and its TensorBoard flush then loses nothing."""
        if cfg.log.tensorboard:
            history = self.records() if resumed else []
            self.tracker = TensorBoardTracker(self.run_dir / TENSORBOARD_DIR, cfg, history=history, resumed=resumed)

    def records(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, in order (a torn line skipped)."""
        return read_records(self.run_dir)

    def close(self) -> None:
        """Flush and close the tracker, if any (metrics.jsonl is closed after every line)."""
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def _divergence(self, record: Mapping[str, Any]) -> str:
        """Why ``record`` looks diverging ("" if it does not)."""
        train, evaluated = record.get("train_loss"), record.get("eval_loss")
        if record.get("replies", 0) > 0 and "train_loss" in record and (train is None or not math.isfinite(train)):
            return "train loss is not finite"  # (a round nobody answered has no train loss either)
        if "eval_loss" not in record:
            return ""
        if evaluated is None or not math.isfinite(evaluated):
            return "eval loss is not finite"
        self._eval_losses.append(float(evaluated))
        recent = self._eval_losses[-(self.diverge_after + 1):]
        if len(recent) == self.diverge_after + 1 and all(b > a for a, b in itertools.pairwise(recent)):
            return f"eval loss rose {self.diverge_after} evaluations in a row"
        return ""

    def write_round(self, record: Mapping[str, Any]) -> None:
        why = self._divergence(record)
        if why:
            record = {**record, "diverging": why}
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, sort_keys=False)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tracker is not None:
            self.tracker.write(record)
        if record.get("round", 0) > 0:
            log.info("%s", progress_line(record, self.rounds))
        else:
            words = " ".join(eval_parts(record)).removesuffix(",")
            log.info("round 0/%d: %s before training", self.rounds, words)

    def truncate_after(self, last_round: int) -> int:
        """Keep the records of rounds <= ``last_round`` (the state a resume restarts from),
        dropping a torn last line; rewritten atomically. Returns the last round kept."""
        if not self.metrics_path.is_file():
            return -1
        kept: list[str] = []
        last = -1
        for line, record in _metrics_lines(self.metrics_path):
            if record.get("round", 0) <= last_round:
                kept.append(line)
                last = max(last, int(record.get("round", 0)))
        atomic_write(self.metrics_path, "".join(line + "\n" for line in kept))
        return last

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR


def tensorboard_available() -> bool:
    """Whether TensorBoard's package (the ``tracking`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


TENSORBOARD_MISSING = ("`log.tensorboard = true` needs the tensorboard package: "
                       "pip install 'fedtune[tracking]' (or set log.tensorboard = false)")


def numeric_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a round's record, by name, ``round`` excepted: what a tracker plots
    (metrics.jsonl writes a non-finite value as null, so a tracker leaves it out too)."""
    return {key: float(value) for key, value in record.items()
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


class TensorBoardTracker:
    """TensorBoard event files of a run, written from the records of metrics.jsonl.

    Every finite number of a round's record becomes a scalar under its own name at
    ``step = round``, flushed as the round ends; with round 0 the resolved config is
    written as text at step 0. A ``resumed`` run opens a new event file with a
    ``purge_step`` (TensorBoard's reader then drops what the interrupted run logged from
    that step on, so no step shows twice) and writes the ``history`` it keeps again:
    with round 0 in it, from step 1 on (round 0 was flushed before round 1 began, the
    config with it); without, from step 0, config included (the run starts over). So the
    event files hold what metrics.jsonl holds whatever moment a crash came at.
    Uses ``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        RuntimeError: if the tensorboard package is missing.
    """

    def __init__(self, directory: Path, cfg: RunConfig, *, history: Iterable[Mapping[str, Any]] = (),
                 resumed: bool = False) -> None:
        if not tensorboard_available():
            raise RuntimeError(TENSORBOARD_MISSING)
        from torch.utils.tensorboard import SummaryWriter

        history = list(history)
        first = 1 if any(int(r.get("round", 0)) == 0 for r in history) else 0
        self.directory = Path(directory)
        self.writer = SummaryWriter(str(self.directory), purge_step=first if resumed else None)
        if first == 0:
            # Markdown: a fenced block keeps the TOML's lines as they are.
            self.writer.add_text("config", "```toml\n" + dump_toml(cfg) + "```", global_step=0)
        for record in history:
            if int(record.get("round", 0)) >= first:
                self._add(record)
        self.writer.flush()

    def _add(self, record: Mapping[str, Any]) -> None:
        step = int(record["round"])
        for key, value in numeric_metrics(record).items():
            self.writer.add_scalar(key, value, global_step=step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the record's numbers at step ``record["round"]`` and flush them to disk."""
        self._add(record)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
