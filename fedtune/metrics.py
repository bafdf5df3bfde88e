"""Evaluation metrics by name (``eval.metrics``), and the scores that are not plain sums.

``loss`` and ``accuracy`` come from one pass over the held-out set
(:func:`fedtune.workload.evaluate`); ``macro_f1`` from the same pass for a classifier;
``rougeL`` and ``exact_match`` from text the causal LM generates for held-out prompts
(:mod:`fedtune.generate`). Each is reported as ``eval_<name>`` in metrics.jsonl.

Torch-free and cheap to import (the config imports it); ``rouge-score`` is imported only
when Rouge-L is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "GENERATION_METRICS",
    "METRIC_TASKS",
    "check_metrics",
    "exact_match",
    "macro_f1",
    "rouge_l",
]

# Each metric and the model.task values it applies to.
METRIC_TASKS: dict[str, tuple[str, ...]] = {
    "loss": ("causal-lm", "seq-cls"),
    "accuracy": ("causal-lm", "seq-cls"),
    "rougeL": ("causal-lm",),
    "exact_match": ("causal-lm",),
    "macro_f1": ("seq-cls",),
}
GENERATION_METRICS: tuple[str, ...] = ("rougeL", "exact_match")
"""The metrics that need generated text (slow: ``eval.generate_examples`` bounds them)."""


def check_metrics(names: Sequence[str], task: str) -> list[str]:
    """One line per problem with ``eval.metrics`` for ``model.task`` = ``task`` (none: fine)."""
    valid = ", ".join(f"{name} ({' / '.join(tasks)})" for name, tasks in METRIC_TASKS.items())
    errors = []
    unknown = [n for n in names if n not in METRIC_TASKS]
    if unknown:
        errors.append(f"`eval.metrics` has unknown {unknown}; valid metrics (and the model.task they "
                      f"apply to): {valid}")
    misplaced = [n for n in names if n in METRIC_TASKS and task not in METRIC_TASKS[n]]
    if misplaced:
        errors.append(f"`eval.metrics` {misplaced} do not apply to model.task = {task!r}; for it use "
                      f"{', '.join(n for n, tasks in METRIC_TASKS.items() if task in tasks)}")
    if not names:
        errors.append(f"`eval.metrics` must name at least one metric; valid: {valid}")
    if len(set(names)) != len(names):
        errors.append(f"`eval.metrics` repeats a metric: {list(names)}")
    return errors


def normalize_whitespace(text: str) -> str:
    """``text`` with runs of whitespace made one space and both ends stripped."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference, whitespace normalised."""
    _check_pairs(predictions, references)
    hits = sum(normalize_whitespace(p) == normalize_whitespace(r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean Rouge-L F-measure in [0, 1], by Google's ``rouge-score``.

    Scored as Super-NaturalInstructions' evaluation (and so FedKSeed's) does:
    ``RougeScorer(["rougeL"], use_stemmer=True)``, whose tokenizer lowercases and keeps
    runs of letters and digits.
    """
    _check_pairs(predictions, references)
    scorer = _scorer()
    total = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))
    return total / len(predictions)


def _scorer() -> Any:
    try:
        from rouge_score import rouge_scorer, tokenizers
    except ImportError:  # pragma: no cover - the torch extra installs it
        raise ImportError("`eval.metrics` = rougeL needs the rouge-score package: "
                          "pip install 'fedtune[torch]' (or pip install rouge-score)") from None
    # The default tokenizer, passed explicitly: left to pick it, the scorer logs that it did through
    # the root logger, which then prints every library's debug lines (Flower's among them).
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=True))


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in ``labels`` or ``predictions``
    (scikit-learn's ``f1_score(average="macro")``; a class with no true or predicted
    positive scores 0)."""
    _check_pairs(predictions, labels)
    scores = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references, at least one; got {len(predictions)} "
                         f"and {len(references)}")
