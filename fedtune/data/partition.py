"""Seeded partitioners: split a dataset's example indices among federated clients.

Every partitioner returns one ``int64`` array of example indices per partition, each
sorted ascending, and uses every index exactly once. Randomness comes from
``fedtune.rng.generator(seed, "partition-<kind>")``, so a partition is a pure function of
its arguments.

- :func:`partition_iid`: a uniform random split into near-equal sizes.
- :func:`partition_dirichlet`: label-wise Dirichlet(alpha) skew (Hsu et al., 2019,
  https://arxiv.org/abs/1909.06335; Flower Datasets' ``DirichletPartitioner``).
- :func:`partition_by_label`: each partition sees exactly ``labels_per_partition`` labels,
  the pathological non-IID split of McMahan et al., 2017 (https://arxiv.org/abs/1602.05629).
- :func:`partition_by_field`: a natural split, one partition per distinct value of a field
  (a task, a category, a user), FedKSeed's Natural Instructions setting; or the values
  grouped onto fewer partitions, balanced by example count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedtune import rng

__all__ = ["partition_by_field", "partition_by_label", "partition_dirichlet", "partition_iid"]

logger = logging.getLogger(__name__)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """``labels`` as a non-empty 1-D int64 array of non-negative values."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`labels` must be a non-empty 1-D sequence, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"`labels` must hold ints, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"`labels` must be >= 0, got {int(array.min())}")
    return array.astype(np.int64, copy=False)


def _finish(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def partition_iid(num_examples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split ``range(num_examples)`` uniformly at random into near-equal partitions.

    Args:
        num_examples: dataset size, >= 1.
        num_partitions: number of partitions, in ``[1, num_examples]``.
        seed: partition seed.

    Returns:
        ``num_partitions`` sorted int64 arrays; sizes differ by at most one (the first
        ``num_examples % num_partitions`` partitions get the extra example).

    Raises:
        TypeError, ValueError: on a bad argument, including more partitions than examples.
    """
    _check_int("num_examples", num_examples, 1)
    _check_int("num_partitions", num_partitions, 1)
    if num_partitions > num_examples:
        raise ValueError(
            f"`num_partitions` ({num_partitions}) must not exceed `num_examples` ({num_examples}); "
            "some partitions would be empty"
        )
    order = rng.generator(seed, "partition-iid").permutation(num_examples)
    return _finish(np.array_split(order, num_partitions))


def _dirichlet_split(
    labels: np.ndarray, num_partitions: int, alpha: float, gen: np.random.Generator
) -> list[np.ndarray]:
    """One draw of the label-wise Dirichlet split."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for label in np.unique(labels):
        indices = gen.permutation(np.flatnonzero(labels == label))
        proportions = gen.dirichlet(np.full(num_partitions, alpha))
        # Cut points at the cumulative proportions; the last one is len(indices) exactly.
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
        for part, chunk in zip(parts, np.split(indices, cuts), strict=True):
            part.append(chunk)
    return [np.concatenate(chunks) for chunks in parts]


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 1,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Label-wise Dirichlet non-IID split (Hsu et al., 2019).

    For each label, draw proportions ``p ~ Dir(alpha * 1_K)`` over the ``K`` partitions
    and cut that label's (shuffled) indices at the cumulative proportions. Small
    ``alpha`` gives each partition few labels; large ``alpha`` approaches IID. The whole
    split is redrawn until every partition holds at least ``min_partition_size``
    examples, at most ``max_retries`` times.

    Args:
        labels: one non-negative int label per example, shape ``(N,)``.
        num_partitions: ``K``, >= 1.
        alpha: Dirichlet concentration, > 0.
        seed: partition seed.
        min_partition_size: the fewest examples a partition may hold, >= 0.
        max_retries: the most draws before giving up, >= 1.

    Returns:
        ``K`` sorted int64 arrays of example indices covering ``range(N)`` exactly once.

    Raises:
        TypeError, ValueError: on a bad argument, if ``K * min_partition_size > N``, or if
            no draw within ``max_retries`` met ``min_partition_size``.
    """
    label_array = _check_labels(labels)
    _check_int("num_partitions", num_partitions, 1)
    _check_int("min_partition_size", min_partition_size, 0)
    _check_int("max_retries", max_retries, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ValueError(f"`alpha` must be a finite float > 0, got {alpha!r}")
    num_examples = len(label_array)
    if num_partitions * min_partition_size > num_examples:
        raise ValueError(
            f"{num_partitions} partitions of at least {min_partition_size} examples need "
            f"{num_partitions * min_partition_size} examples, but there are {num_examples}"
        )
    gen = rng.generator(seed, "partition-dirichlet")
    for attempt in range(1, max_retries + 1):
        parts = _dirichlet_split(label_array, num_partitions, float(alpha), gen)
        smallest = min(len(part) for part in parts)
        if smallest >= min_partition_size:
            if attempt > 1:
                logger.debug("dirichlet split met min_partition_size after %d draws", attempt)
            return _finish(parts)
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {num_examples} examples into {num_partitions} "
        f"partitions gave every partition >= {min_partition_size} examples in {max_retries} "
        "draws; use a larger `alpha`, fewer partitions, a smaller `min_partition_size` or "
        "more `max_retries`"
    )


def partition_by_label(
    labels: Sequence[int] | np.ndarray,
    num_partitions: int,
    labels_per_partition: int,
    seed: int,
) -> list[np.ndarray]:
    """Pathological non-IID split: every partition holds exactly ``labels_per_partition`` labels.

    A label-exact variant of McMahan et al.'s shards (2017, Sec. 3, "each client 2
    shards"): the ``L`` distinct labels are put in a random order, partition ``k`` takes
    the labels at positions ``k*s, ..., k*s + s - 1`` (mod ``L``) of it, and each label's
    shuffled examples are split as evenly as possible among the partitions holding it.
    Labels therefore have ``floor`` or ``ceil`` of ``K*s/L`` holders each; the ``ceil``
    ones go to the labels with the most examples.

    Args:
        labels: one non-negative int label per example, shape ``(N,)``.
        num_partitions: ``K``, >= 1.
        labels_per_partition: ``s``, in ``[1, L]``.
        seed: partition seed.

    Returns:
        ``K`` sorted int64 arrays of example indices covering ``range(N)`` exactly once;
        partition ``k`` holds examples of exactly ``s`` distinct labels.

    Raises:
        TypeError, ValueError: on a bad argument; if ``s > L``; if ``K * s < L`` (some
            label would have no partition); or if a label has fewer examples than
            partitions holding it.
    """
    label_array = _check_labels(labels)
    _check_int("num_partitions", num_partitions, 1)
    _check_int("labels_per_partition", labels_per_partition, 1)
    distinct, counts = np.unique(label_array, return_counts=True)
    num_labels = len(distinct)
    if labels_per_partition > num_labels:
        raise ValueError(
            f"`labels_per_partition` ({labels_per_partition}) exceeds the {num_labels} distinct labels"
        )
    if num_partitions * labels_per_partition < num_labels:
        raise ValueError(
            f"{num_partitions} partitions x {labels_per_partition} labels each cover fewer than "
            f"the {num_labels} distinct labels, so some examples would be unused; raise "
            "`num_partitions` or `labels_per_partition`"
        )
    gen = rng.generator(seed, "partition-by-label")
    shuffled = gen.permutation(num_labels)  # positions into `distinct`
    # The first (K*s mod L) positions of the round robin get one holder more: give those
    # to the labels with the most examples (ties in shuffled order), in shuffled order.
    num_extra = (num_partitions * labels_per_partition) % num_labels
    largest = shuffled[np.argsort(-counts[shuffled], kind="stable")[:num_extra]]
    rest = shuffled[~np.isin(shuffled, largest)]
    label_order = np.concatenate([gen.permutation(largest), rest])
    holders: list[list[int]] = [[] for _ in range(num_labels)]
    for k in range(num_partitions):
        for j in range(labels_per_partition):
            holders[label_order[(k * labels_per_partition + j) % num_labels]].append(k)
    for position, label_holders in enumerate(holders):
        if counts[position] < len(label_holders):
            raise ValueError(
                f"label {int(distinct[position])} has {int(counts[position])} examples but "
                f"{len(label_holders)} partitions must hold it; use fewer partitions or fewer "
                "labels per partition"
            )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for position, label_holders in enumerate(holders):
        indices = gen.permutation(np.flatnonzero(label_array == distinct[position]))
        for k, chunk in zip(label_holders, np.array_split(indices, len(label_holders)), strict=True):
            parts[k].append(chunk)
    # Shuffle which partition is which, so the extra-holder labels are not always partition 0's.
    return _finish([np.concatenate(parts[k]) for k in gen.permutation(num_partitions)])


def partition_by_field(
    values: Sequence[str], num_partitions: int, seed: int, *, group: bool = False
) -> list[np.ndarray]:
    """Natural partitions: the examples of each distinct ``values`` entry stay together.

    Without ``group`` there must be exactly ``num_partitions`` distinct values, and
    partition ``k`` holds the examples of the ``k``-th value in sorted order. With
    ``group`` the values are spread over the partitions, largest first, each onto the
    partition holding the fewest examples so far (lowest index on a tie); values of equal
    size go in an order drawn from ``seed``. That greedy split is balanced by example count
    to within the largest value's size, and a pure function of its arguments.

    Args:
        values: one field value per example (a task, category, ...), shape ``(N,)``.
        num_partitions: ``K``, >= 1.
        seed: partition seed (orders values of equal size when grouping).
        group: allow more distinct values than partitions, grouping them.

    Returns:
        ``K`` sorted int64 arrays of example indices covering ``range(N)`` exactly once.

    Raises:
        TypeError, ValueError: on a bad argument; if there are fewer distinct values than
            partitions (some would be empty), or more without ``group``. The messages name
            ``data.partition_field``, ``federation.num_clients`` and ``data.group_values``.
    """
    _check_int("num_partitions", num_partitions, 1)
    if len(values) == 0:
        raise ValueError("`values` must hold at least one value, got none")
    distinct, inverse, counts = np.unique(np.asarray(values, dtype=str), return_inverse=True, return_counts=True)
    num_values = len(distinct)
    if num_values < num_partitions:
        raise ValueError(
            f"`data.partition_field` has {num_values} distinct values in the training data but "
            f"federation.num_clients = {num_partitions}: {num_partitions - num_values} clients would hold no "
            f"examples; set federation.num_clients <= {num_values}"
        )
    if num_values > num_partitions and not group:
        raise ValueError(
            f"`data.partition_field` has {num_values} distinct values but federation.num_clients = "
            f"{num_partitions} (one client per value); set federation.num_clients = {num_values} or "
            "data.group_values = true to group values onto the clients"
        )
    if not group:
        return _finish([np.flatnonzero(inverse == v) for v in range(num_values)])
    gen = rng.generator(seed, "partition-by-field")
    tie_order = gen.permutation(num_values)
    order = tie_order[np.argsort(-counts[tie_order], kind="stable")]  # largest first, ties seeded
    sizes = np.zeros(num_partitions, dtype=np.int64)
    owner = np.empty(num_values, dtype=np.int64)
    for value in order:
        k = int(np.argmin(sizes))  # the first of the smallest
        owner[value] = k
        sizes[k] += counts[value]
    return _finish([np.flatnonzero(owner[inverse] == k) for k in range(num_partitions)])
