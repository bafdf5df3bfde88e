"""Figures of one run: eval loss and accuracy, train loss, bytes per client and the
generation / classification scores (Rouge-L, exact match, macro-F1), per round.

Reads the ``metrics.jsonl`` a run writes (one JSON object per line, each with an int
``"round"`` and any of the metrics below) and draws PNGs with matplotlib's object API
(a ``Figure`` rendered by Agg): no pyplot, no display, no change to the caller's backend.
matplotlib is imported only when :func:`plot_run` is called, so importing this module is
cheap.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedtune.runs import METRICS_FILE

__all__ = ["plot_run"]

log = logging.getLogger(__name__)

_METRICS = (
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "elapsed_s",
    "eval_rougeL",
    "eval_exact_match",
    "eval_macro_f1",
    "fed_eval_accuracy",
    "fed_eval_accuracy_min",
    "fed_eval_accuracy_median",
    "fed_eval_accuracy_max",
)
# The scores in [0, 1] beside loss and accuracy (eval.metrics), with their legend labels.
_SCORES = (("eval_rougeL", "Rouge-L (F)"), ("eval_exact_match", "exact match"), ("eval_macro_f1", "macro-F1"))
# A byte series spanning more than this factor gets a log y axis.
_LOG_SCALE_RANGE = 100.0
_BYTE_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))

Series = tuple[list[int], list[float]]
"""``(rounds, values)``, sorted by round, finite values only."""


def _row_problem(row: Any) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    round_ = row.get("round")
    if isinstance(round_, bool) or not isinstance(round_, int):
        return f"`round` must be an int, got {round_!r}"
    for key in _METRICS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"`{key}` must be a number or null, got {value!r}"
    return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse ``path`` into its rows; blank lines are skipped.

    Raises:
        ValueError: naming ``path:line`` for a line that is not a JSON object with an int
            ``round``, or whose known metric is neither a number nor null.
    """
    rows = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})"
                ) from err
            problem = _row_problem(row)
            if problem is not None:
                raise ValueError(f"{path}:{lineno}: {problem}")
            rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> Series:
    """The finite values of ``key`` by round; a round logged twice (a resumed run) keeps
    its last value. null, NaN and inf are gaps."""
    by_round: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if value is not None and math.isfinite(value):
            by_round[row["round"]] = float(value)
    rounds = sorted(by_round)
    return rounds, [by_round[r] for r in rounds]


def _byte_unit(values: list[float]) -> tuple[str, int]:
    largest = max(abs(v) for v in values)
    return next(((name, size) for name, size in _BYTE_UNITS if largest >= size), _BYTE_UNITS[-1])


def _format_bytes(num: float, _pos: object = None) -> str:
    unit, size = _byte_unit([num])
    return f"{num / size:g} {unit}"


def _new_axes(title: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _plot_eval(series: dict[str, Series], path: Path) -> None:
    loss, accuracy = series["eval_loss"], series["eval_accuracy"]
    fig, ax = _new_axes("evaluation")
    lines = []
    if loss[0]:
        lines += ax.plot(*loss, marker="o", color="tab:blue", label="eval loss")
        ax.set_ylabel("eval loss")
    if accuracy[0]:
        acc_ax = ax.twinx() if loss[0] else ax
        lines += acc_ax.plot(*accuracy, marker="s", color="tab:orange", label="eval accuracy")
        acc_ax.set_ylabel("eval accuracy (fraction)")
    # Below the axes: with two y axes, "best" would only dodge the first axis's line.
    fig.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncols=2)
    fig.savefig(path, dpi=100)


def _plot_train_loss(series: dict[str, Series], path: Path) -> None:
    loss = series["train_loss"]
    fig, ax = _new_axes("training")
    ax.plot(*loss, marker="o", color="tab:blue", label="train loss")
    ax.set_ylabel("train loss")
    ax.legend(loc="best")
    fig.savefig(path, dpi=100)


def _plot_bytes(series: dict[str, Series], path: Path) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    up, down = series["bytes_up_per_client"], series["bytes_down_per_client"]
    fig, ax = _new_axes("communication per client")
    values = up[1] + down[1]
    positive = [v for v in values if v > 0]
    log_scale = bool(positive) and max(positive) / min(positive) > _LOG_SCALE_RANGE
    # Log axis: raw bytes, ticks at powers of 2, labelled in B/KiB/MiB/GiB.
    # Linear axis: one unit, the largest one that the biggest value reaches.
    unit, size = ("B", 1) if log_scale else _byte_unit(values)
    for (rounds, byte_values), label, marker in ((up, "uplink", "^"), (down, "downlink", "v")):
        if rounds:
            ax.plot(rounds, [v / size for v in byte_values], marker=marker, label=label)
    if log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
        ax.yaxis.set_major_formatter(FuncFormatter(_format_bytes))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("bytes per client per round (log scale)")
    else:
        ax.set_ylabel(f"bytes per client per round ({unit})")
    ax.legend(loc="best")
    fig.savefig(path, dpi=100)


def _plot_scores(series: dict[str, Series], path: Path) -> None:
    fig, ax = _new_axes("generation and classification scores")
    for (key, label), marker in zip(_SCORES, ("o", "s", "^"), strict=True):
        if series[key][0]:
            ax.plot(*series[key], marker=marker, label=label)
    ax.set_ylabel("score (fraction)")
    ax.legend(loc="best")
    fig.savefig(path, dpi=100)


def _plot_federated(series: dict[str, Series], path: Path) -> None:
    fig, ax = _new_axes("federated evaluation: the clients' own held-out data")
    low, high = dict(zip(*series["fed_eval_accuracy_min"])), dict(zip(*series["fed_eval_accuracy_max"]))
    band = sorted(set(low) & set(high))
    if band:
        ax.fill_between(band, [low[r] for r in band], [high[r] for r in band], alpha=0.25, color="tab:green",
                        label="clients' accuracy, lowest to highest")
    if series["fed_eval_accuracy_median"][0]:
        ax.plot(*series["fed_eval_accuracy_median"], linestyle="--", color="tab:green", label="median client")
    if series["fed_eval_accuracy"][0]:
        ax.plot(*series["fed_eval_accuracy"], marker="o", color="tab:green", label="weighted mean")
    if series["eval_accuracy"][0]:
        ax.plot(*series["eval_accuracy"], marker="s", color="tab:orange", label="server's eval set")
    ax.set_ylabel("accuracy (fraction)")
    ax.legend(loc="best")
    fig.savefig(path, dpi=100)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw a run's metrics as PNGs.

    Writes, for the metrics present in ``run_dir/metrics.jsonl``:

    * ``eval.png``: ``eval_loss`` and, on a second y axis, ``eval_accuracy`` vs round;
    * ``train_loss.png``: ``train_loss`` vs round;
    * ``bytes.png``: ``bytes_up_per_client`` and ``bytes_down_per_client`` vs round, in
      B/KiB/MiB/GiB, on a log axis when they span more than a factor of 100;
    * ``scores.png``: ``eval_rougeL``, ``eval_exact_match`` and ``eval_macro_f1`` vs round
      (``eval.metrics``), when the run has any of them;
    * ``federated.png``: with ``eval.federated``, the clients' weighted-mean accuracy on their
      own held-out data, the median client and the band from the lowest to the highest
      client, beside the server's eval accuracy.

    A figure whose metrics never appear is skipped (logged at INFO). Rows may lack any
    metric and hold other keys; null (the log's non-finite values), NaN and inf are gaps.

    Args:
        run_dir: the run's directory, holding ``metrics.jsonl``.
        out_dir: where to write the PNGs (created if missing); defaults to ``run_dir``.

    Returns:
        The paths written, in the order eval, train loss, bytes, scores, federated.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``metrics.jsonl`` does not exist.
        ValueError: a line of ``metrics.jsonl`` is malformed (the message names file:line).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist (or is not a directory)")
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{str(metrics_path)!r} not found: `run_dir` must be a run's output directory, "
            f"which holds {METRICS_FILE}"
        )
    rows = _read_metrics(metrics_path)
    out = run_dir if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    series = {key: _series(rows, key) for key in _METRICS}
    written = []
    figures: tuple[tuple[str, tuple[str, ...], Callable[[dict[str, Series], Path], None]], ...] = (
        ("eval.png", ("eval_loss", "eval_accuracy"), _plot_eval),
        ("train_loss.png", ("train_loss",), _plot_train_loss),
        ("bytes.png", ("bytes_up_per_client", "bytes_down_per_client"), _plot_bytes),
        ("scores.png", tuple(key for key, _ in _SCORES), _plot_scores),
        ("federated.png", ("fed_eval_accuracy",), _plot_federated),
    )
    for filename, keys, draw in figures:
        if not any(series[key][0] for key in keys):
            log.info("skip %s: no finite %s in %s", filename, " or ".join(keys), metrics_path)
            continue
        path = out / filename
        draw(series, path)
        written.append(path)
    return written
