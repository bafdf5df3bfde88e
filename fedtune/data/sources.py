"""A run's examples from its generated or jsonl/csv source, and its class names (torch-free).

The one implementation of how ``data.source`` becomes (train, held-out) examples for the
sources that need no tokenizer, shared by :class:`fedtune.workload.Workload` (torch) and
:class:`fedtune.device.DeviceWorkload` (numpy + ONNX Runtime), so both hold the same
examples in the same order. ``data.source = "file"`` (Hugging Face ``datasets``) stays in
:mod:`fedtune.workload`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedtune.rng import derive_seed, generator

from .files import load_csv, load_jsonl
from .news import NEWS_LABEL_NAMES, generate_news
from .tasks import Example, generate_instructions
from .topics import TOPIC_LABEL_NAMES, generate_topics

if TYPE_CHECKING:
    from fedtune.config import RunConfig

__all__ = ["GENERATED_LABEL_NAMES", "holdout_rows", "label_names", "load_examples"]

GENERATED_LABEL_NAMES: dict[str, tuple[str, ...]] = {"topics": TOPIC_LABEL_NAMES, "news": NEWS_LABEL_NAMES}
"""The class names of each generated classification source (``data.source``)."""

_GENERATORS: dict[str, Callable[[int, int], list[Example]]] = {"topics": generate_topics, "news": generate_news, "instructions": generate_instructions}


def load_examples(cfg: RunConfig) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples of a generated, jsonl or csv source.

    A generated source draws ``num_examples`` and ``eval_examples`` from the run's seed; a
    file is split by :func:`holdout_rows`.

    Raises:
        ValueError: for ``data.source = "file"`` (read by :mod:`fedtune.workload`), or a
            file with fewer than 2 examples.
    """
    d = cfg.data
    make = _GENERATORS.get(d.source)
    if make is not None:
        return (make(d.num_examples, derive_seed(cfg.seed, "train-data")),
                make(d.eval_examples, derive_seed(cfg.seed, "eval-data")))
    if d.source not in ("jsonl", "csv"):
        raise ValueError(f"data.source = {d.source!r} is read by fedtune.workload.Workload, not here")
    examples = (load_jsonl if d.source == "jsonl" else load_csv)(d.path)
    if len(examples) < 2:
        raise ValueError(f"{d.path}: {len(examples)} example(s); need at least 2 to hold some out")
    train_rows, eval_rows = holdout_rows(cfg, len(examples))
    return [examples[i] for i in train_rows], [examples[i] for i in eval_rows]


def holdout_rows(cfg: RunConfig, num_rows: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of a file: a seeded tenth at most, ``eval_examples`` at most."""
    order = generator(cfg.seed, "holdout").permutation(num_rows).tolist()
    num_eval = min(cfg.data.eval_examples, max(1, num_rows // 10))
    return order[num_eval:], order[:num_eval]


def label_names(cfg: RunConfig, num_labels: int, found: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The class names of a run: ``data.label_names``, else the generated task's own, else
    ``found`` (a file's string labels, in class-id order).

    Raises:
        ValueError: if there are none, or their number differs from ``num_labels``.
    """
    names = tuple(cfg.data.label_names) or GENERATED_LABEL_NAMES.get(cfg.data.source, ()) or found
    if not names:
        raise ValueError(f"data.source = {cfg.data.source!r} names no classes (its labels are ints): "
                         "set `data.label_names`")
    if len(names) != num_labels:
        raise ValueError(
            f"`data.label_names` has {len(names)} names but the data has {num_labels} classes "
            f"(labels 0..{num_labels - 1}): give one name per class, in label order"
        )
    return names
