"""Examples and fedtune's generated instruction task (no downloads, no files).

The task is a family of symbol-manipulation instructions, small enough for a 3M-parameter
model to learn in a simulation and structured enough to be non-IID: each example's
``label`` is its task type, which the partitioners in :mod:`fedtune.data.partition`
split on (Hsu et al., 2019, https://arxiv.org/abs/1909.06335).

An example::

    prompt:   "reverse : c a d =>"
    response: "d a c"

Everything is space-separated words, so :class:`fedtune.data.tokenizer.WordTokenizer`
encodes it one word per token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedtune import rng

__all__ = ["SYMBOLS", "TASK_TYPES", "Example", "generate_instructions", "solve"]

logger = logging.getLogger(__name__)

TASK_TYPES: tuple[str, ...] = ("copy", "reverse", "sort", "first", "last", "max")
"""The task types; an example's ``label`` is its type's index in this tuple."""

SYMBOLS: tuple[str, ...] = tuple("abcdefghijklmnop")
"""The 16 symbols the tasks operate on, ``"a"`` to ``"p"``, ordered alphabetically."""


@dataclass(frozen=True)
class Example:
    """One supervised example.

    Attributes:
        prompt: the input text.
        response: the target text the model learns to produce after ``prompt`` (may be
            empty for classification data).
        label: a non-negative category id, used by the non-IID partitioners and as the
            target of sequence classification.
        sep: what joins prompt and response into one text: a space, or nothing where the
            prompt ends its own line (the ``alpaca``/``dolly``/``chat`` templates of
            :mod:`fedtune.data.templates`, which Alpaca and Dolly trained on without one).
    """

    prompt: str
    response: str
    label: int
    sep: str = " "

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"`prompt` must be a str, got {type(self.prompt).__name__}")
        if not isinstance(self.response, str):
            raise TypeError(f"`response` must be a str, got {type(self.response).__name__}")
        if isinstance(self.label, bool) or not isinstance(self.label, int):
            raise TypeError(f"`label` must be an int, got {type(self.label).__name__} {self.label!r}")
        if self.label < 0:
            raise ValueError(f"`label` must be >= 0, got {self.label}")
        if self.sep not in (" ", ""):
            raise ValueError(f"`sep` must be ' ' or '', got {self.sep!r}")

    @property
    def text(self) -> str:
        """Prompt and response as one text (the prompt alone when the response is empty)."""
        return f"{self.prompt}{self.sep}{self.response}" if self.response else self.prompt


def solve(task_type: str, symbols: Sequence[str]) -> list[str]:
    """The correct response words of ``task_type`` applied to ``symbols``.

    ``sort`` and ``max`` use alphabetical order (the order of :data:`SYMBOLS`).

    Args:
        task_type: one of :data:`TASK_TYPES`.
        symbols: the input words, at least one.

    Returns:
        The response words: the whole sequence for ``copy``/``reverse``/``sort``, a single
        word for ``first``/``last``/``max``.

    Raises:
        ValueError: on an unknown task type or empty ``symbols``.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"`task_type` must be one of {TASK_TYPES}, got {task_type!r}")
    if len(symbols) == 0:
        raise ValueError("`symbols` must hold at least one symbol, got an empty sequence")
    words = list(symbols)
    if task_type == "copy":
        return words
    if task_type == "reverse":
        return words[::-1]
    if task_type == "sort":
        return sorted(words)
    if task_type == "first":
        return [words[0]]
    if task_type == "last":
        return [words[-1]]
    return [max(words)]  # "max"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def _check_task_types(task_types: Sequence[str]) -> tuple[str, ...]:
    if isinstance(task_types, str):
        raise TypeError(
            f"`task_types` must be a sequence of task names, got the str {task_types!r}; "
            f"wrap it in a tuple: ({task_types!r},)"
        )
    types = tuple(task_types)
    if not types:
        raise ValueError(f"`task_types` must name at least one of {TASK_TYPES}, got an empty sequence")
    unknown = [t for t in types if t not in TASK_TYPES]
    if unknown:
        raise ValueError(f"`task_types` holds unknown task types {unknown}; allowed: {TASK_TYPES}")
    if len(set(types)) != len(types):
        raise ValueError(f"`task_types` must not repeat a type (it would skew sampling), got {types}")
    return types


def generate_instructions(
    num_examples: int,
    seed: int,
    *,
    min_len: int = 3,
    max_len: int = 6,
    task_types: Sequence[str] = TASK_TYPES,
) -> list[Example]:
    """Generate the instruction task deterministically from ``seed``.

    Example ``i`` is decided by row ``i`` of a ``(num_examples, 2 + max_len)`` matrix of
    uniform ``[0, 1)`` floats from ``fedtune.rng.generator(seed, "instructions")``:
    column 0 picks its task type uniformly from ``task_types``, column 1 its length
    uniformly from ``[min_len, max_len]``, and the next ``length`` columns its symbols
    uniformly (with replacement) from :data:`SYMBOLS`. The matrix is filled row by row,
    so ``generate_instructions(n, ...)`` is a prefix of ``generate_instructions(m, ...)``
    for ``n <= m`` and otherwise equal arguments.

    Args:
        num_examples: how many examples, >= 1.
        seed: the data seed (any int accepted by :func:`fedtune.rng.derive_seed`).
        min_len: the fewest input symbols per example, >= 1.
        max_len: the most input symbols per example, >= ``min_len``.
        task_types: the task types to draw from (a subset of :data:`TASK_TYPES`).

    Returns:
        ``num_examples`` examples; ``label`` is the index of the task type in
        :data:`TASK_TYPES` (not in ``task_types``), so labels mean the same thing
        whatever subset is generated.

    Raises:
        TypeError, ValueError: on a bad argument.
    """
    _check_int("num_examples", num_examples, 1)
    _check_int("min_len", min_len, 1)
    _check_int("max_len", max_len, 1)
    if max_len < min_len:
        raise ValueError(f"`max_len` must be >= `min_len`, got min_len={min_len}, max_len={max_len}")
    types = _check_task_types(task_types)

    uniform = rng.generator(seed, "instructions").random((num_examples, 2 + max_len))
    # floor(u * k) is uniform on {0, ..., k-1} for u uniform on [0, 1) (up to 2**-53).
    type_ids = np.floor(uniform[:, 0] * len(types)).astype(np.int64)
    lengths = min_len + np.floor(uniform[:, 1] * (max_len - min_len + 1)).astype(np.int64)
    symbol_ids = np.floor(uniform[:, 2:] * len(SYMBOLS)).astype(np.int64)

    examples = []
    for type_id, length, row in zip(type_ids, lengths, symbol_ids, strict=True):
        task_type = types[type_id]
        symbols = [SYMBOLS[s] for s in row[:length]]
        examples.append(
            Example(
                prompt=f"{task_type} : {' '.join(symbols)} =>",
                response=" ".join(solve(task_type, symbols)),
                label=TASK_TYPES.index(task_type),
            )
        )
    return examples
