"""Privacy: secure aggregation with Flower's SecAgg+ (docs/privacy.md).

``fedtune.privacy.secagg`` resolves the protocol's numbers from ``[privacy]`` and lays
updates out as the vectors SecAgg+ sums; the protocol itself is Flower's
(``SecAggPlusWorkflow``, ``secaggplus_mod``): fedtune writes no crypto.
"""

from fedtune.privacy.secagg import (
    SecAggSettings,
    dense_seed_vector,
    error_bound,
    flatten,
    q_ratio,
    seed_sums_from_mean,
    unflatten,
)

__all__ = [
    "SecAggSettings", "dense_seed_vector", "error_bound", "flatten", "q_ratio", "seed_sums_from_mean", "unflatten",
]
