"""Privacy: secure aggregation with Flower's SecAgg+ and differential privacy (docs/privacy.md).

``fedtune.privacy.secagg`` resolves the protocol's numbers from ``[privacy]`` and lays
updates out as the vectors SecAgg+ sums; the protocol itself is Flower's
(``SecAggPlusWorkflow``, ``secaggplus_mod``): fedtune writes no crypto.
``fedtune.privacy.dp`` clips and noises those vectors; ``fedtune.privacy.accounting``
keeps the run's releases and their epsilon (dp-accounting's RDP accountant).
"""

from fedtune.privacy.secagg import (
    SecAggSettings,
    dense_seed_vector,
    error_bound,
    flatten,
    q_ratio,
    seed_sums_from_mean,
    unflatten,
    update_vector,
)

__all__ = [
    "SecAggSettings", "dense_seed_vector", "error_bound", "flatten", "q_ratio", "seed_sums_from_mean", "unflatten",
    "update_vector",
]
