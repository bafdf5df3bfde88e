"""The algorithm registry: every ``algorithm.name`` is one :class:`Algorithm`, declared once.

An algorithm declares what it is (its family: zeroth-order seeds, LoRA adapters, or a model
split between client and server), which of
fedtune's optional machinery it supports (:data:`FEATURES`), its own config section (a frozen
dataclass read from a TOML table of the same name), the checks that only it needs, and its
hooks: for LoRA the server rule (:mod:`fedtune.lora.rules`) that aggregates, an optional
server optimizer applied to the aggregate, an optional extra term of the clients' loss; for
any family the checks that need the built model (``check_model``).

The config's name check and every "which algorithms support X" question are answered here,
so a new algorithm is one module under :mod:`fedtune.algorithms` plus its tests. Nothing
here imports torch: the config and a torch-free device client read the registry too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "FAMILIES",
    "FEATURES",
    "Algorithm",
    "ClientLoss",
    "RankPruner",
    "ServerOptimizer",
    "get",
    "names",
    "register",
    "sections",
    "supporting",
]

FEATURES = frozenset({
    "secagg",  # privacy.secagg: clients' updates summed by SecAgg+
    "dp",  # privacy.dp = central | distributed | local: clipped and noised client updates
    "dp-sample",  # privacy.dp = "sample": per-example clipped, noised scalars inside each ZO step
    "device",  # ondevice.clients: torch-free ONNX Runtime clients
    "compress",  # compress.method: compressed dense uploads
    "resume",  # fedtune run --resume: continue a crashed run from its log
    "lora-params",  # algorithm.params = "lora": zeroth-order over PEFT adapters
    "trainable",  # model.trainable: the model tensors a ZO run perturbs, or a first-order one trains instead of adapters
    "momentum",  # algorithm.server_momentum: momentum on the aggregated per-seed scalars
    "robust",  # robust.method: Byzantine-robust aggregation of the clear updates (fedtune.robust)
})


class ServerOptimizer(Protocol):
    """Turns the round's aggregate into the next global state (FedOpt): keeps its own state."""

    def step(self, current: Mapping[str, Any], aggregate: Mapping[str, Any]) -> dict[str, Any]: ...


class ClientLoss(Protocol):
    """An extra term of a client's local loss, given its trainable tensors and the global ones."""

    def __call__(self, params: Mapping[str, Any], anchors: Mapping[str, Any]) -> Any: ...


class RankPruner(Protocol):
    """The rank a client keeps after its local steps, given its trained uplink tensors (cut to
    the rank ``rank`` it trained) and that rank: ``rank`` or less (HetLoRA's self-pruning)."""

    def __call__(self, state: Mapping[str, Any], rank: int) -> int: ...


@dataclass(frozen=True)
class Algorithm:
    """One ``algorithm.name``.

    Attributes:
        name: the config name (``algorithm.name``).
        family: ``"zo"`` (seed-and-scalar updates, :class:`fedtune.server.strategy.FedKSeed`),
            ``"lora"`` (PEFT adapters, :class:`fedtune.server.lora_strategy.FederatedLora`) or
            ``"split"`` (the model cut between client and server, activations and their
            gradients exchanged every local step: :class:`fedtune.server.split_strategy.SplitPrompt`).
        summary: one line for docs and ``--help``.
        features: the subset of :data:`FEATURES` it supports; asking for another is a config error.
        rule: LoRA: the registered :mod:`fedtune.lora.rules` rule that aggregates.
        section: the algorithm's own config dataclass, read from the TOML table ``[<section_name>]``.
        section_name: that table's name.
        check: extra validation of a whole run config; returns one line per problem.
        server_optimizer: LoRA: builds the optimizer applied to each round's aggregate.
        client_loss: LoRA: builds the extra loss term of local training from the run config.
        client_rank: LoRA: the adapter rank (<= lora.rank) the client of a partition trains; its
            rule must aggregate updates of different ranks (:mod:`fedtune.lora.hetlora`).
        rank_pruner: LoRA with ``client_rank``: builds, from the run config, the client's rank
            self-pruning (None: ranks stay as ``client_rank`` gives them). The server keeps each
            partition's rank across rounds and names it in the partition's train message.
        pooled: ZO: directions are keyed by an index into the K candidate seeds (FedKSeed);
            False: by a fresh raw 64-bit seed each step (MeZO).
        client_model: turns the model a client builds into the one it runs (Offsite-Tuning:
            the emulator, :func:`fedtune.emulator.make_emulator`); the server keeps the full model.
        client_tensors_given: with ``client_model``, whether (given the run config) the client's
            model gets every tensor from the algorithm's own files (Offsite-Tuning's published
            emulator): the client then builds the model from the checkpoint's ``config.json``
            and never reads the checkpoint's weights.
        tuned: the full model's names of the tensors clients tune, given the run config and
            the model (full or the client's); their updates travel under these names. None:
            ``model.trainable``'s selection (or adapters, for LoRA).
        adapter_lora: with ``tuned``: whether, given the run config, the transformer blocks
            among the tuned tensors carry PEFT LoRA adapters (``[lora]``) instead of being tuned
            in full (Offsite-Tuning with ``offsite.lora``); a seq-cls head is still tuned in full.
        check_model: validation that needs the built model, given the run config and the full
            model; returns one line per problem (``fedtune run`` exits 2 on any, before
            anything is written).
    """

    name: str
    family: Literal["zo", "lora", "split"]
    summary: str
    features: frozenset[str] = frozenset()
    rule: str = ""
    section: type | None = None
    section_name: str = ""
    check: Callable[[Any], list[str]] | None = None
    server_optimizer: Callable[[Any], ServerOptimizer] | None = field(default=None, compare=False)
    client_loss: Callable[[Any], ClientLoss | None] | None = field(default=None, compare=False)
    client_rank: Callable[[Any, int], int] | None = field(default=None, compare=False)
    rank_pruner: Callable[[Any], RankPruner | None] | None = field(default=None, compare=False)
    pooled: bool = True
    client_model: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    client_tensors_given: Callable[[Any], bool] | None = field(default=None, compare=False)
    tuned: Callable[[Any, Any], list[str]] | None = field(default=None, compare=False)
    adapter_lora: Callable[[Any], bool] | None = field(default=None, compare=False)
    check_model: Callable[[Any, Any], list[str]] | None = field(default=None, compare=False)


FAMILIES = ("zo", "lora", "split")  # in the order names() lists them

_REGISTRY: dict[str, Algorithm] = {}
_SECTIONS: dict[str, type] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to the registry and return it.

    Raises:
        ValueError: on a name registered before, an unknown feature or family, a LoRA
            algorithm without a rule, a rank pruner without client ranks, or a section name
            another algorithm declared with another dataclass.
    """
    if not algorithm.name or algorithm.name != algorithm.name.strip():
        raise ValueError(f"an algorithm needs a non-empty name without spaces, got {algorithm.name!r}")
    if algorithm.name in _REGISTRY:
        raise ValueError(f"an algorithm named {algorithm.name!r} is already registered")
    if algorithm.family not in FAMILIES:
        raise ValueError(f"algorithm {algorithm.name!r}: family must be one of {', '.join(map(repr, FAMILIES))}, "
                         f"got {algorithm.family!r}")
    unknown = set(algorithm.features) - FEATURES
    if unknown:
        raise ValueError(f"algorithm {algorithm.name!r}: unknown features {sorted(unknown)}; "
                         f"known: {sorted(FEATURES)}")
    if algorithm.rank_pruner is not None and algorithm.client_rank is None:
        raise ValueError(f"algorithm {algorithm.name!r}: `rank_pruner` needs `client_rank` (the ranks it prunes)")
    if algorithm.adapter_lora is not None and algorithm.tuned is None:
        raise ValueError(f"algorithm {algorithm.name!r}: `adapter_lora` needs `tuned` (the blocks it adapts)")
    if algorithm.family == "lora" and not algorithm.rule:
        raise ValueError(f"LoRA algorithm {algorithm.name!r} must name the rule that aggregates (`rule`)")
    if (algorithm.section is None) != (not algorithm.section_name):
        raise ValueError(f"algorithm {algorithm.name!r}: give both `section` and `section_name`, or neither")
    if algorithm.section is not None:
        seen = _SECTIONS.get(algorithm.section_name)
        if seen is not None and seen is not algorithm.section:
            raise ValueError(f"algorithm {algorithm.name!r}: config section [{algorithm.section_name}] is "
                             f"already declared with {seen.__name__}")
        _SECTIONS[algorithm.section_name] = algorithm.section
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    """The algorithm registered as ``name``.

    Raises:
        ValueError: on an unknown name, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(names())}") from None


def _ordered() -> list[Algorithm]:
    """Zeroth-order first, then LoRA, then split; by name within a family (stable, whatever the import order)."""
    return sorted(_REGISTRY.values(), key=lambda a: (FAMILIES.index(a.family), a.name))


def names(family: str | None = None) -> tuple[str, ...]:
    """The registered names (of one family): zeroth-order first, then LoRA, then split, by name."""
    return tuple(a.name for a in _ordered() if family is None or a.family == family)


def supporting(feature: str) -> tuple[str, ...]:
    """The registered names that support ``feature`` (one of :data:`FEATURES`)."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; known: {sorted(FEATURES)}")
    return tuple(a.name for a in _ordered() if feature in a.features)


def sections() -> dict[str, type]:
    """Every algorithm config section: TOML table name -> its dataclass."""
    return dict(_SECTIONS)
