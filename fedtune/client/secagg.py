"""The client's side of Flower's SecAgg+: its mod, and fedtune's reply in the layout it masks.

``secaggplus_mod`` runs the protocol's four stages; only the third (collect masked vectors)
reaches fedtune's train handler, whose reply must then be in the legacy ``FitRes`` layout:
the mod masks its parameters (here the dense per-seed vector, docs/privacy.md) and clears
them from the reply. fedtune's state (round, digest) and metrics travel beside it in clear,
as the weights always did (FLOWER-NOTES.md: num_examples and metrics are plaintext).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord

from fedtune import wire
from fedtune._flwr_compat import RECORD_KEY_CONFIGS, ClientAppCallable, fit_content, secaggplus_mod
from fedtune.config import RunConfig
from fedtune.privacy import SecAggSettings, dense_seed_vector
from fedtune.privacy.dp import clip_and_noise
from fedtune.privacy.release import withheld_under_dp

__all__ = ["is_secure", "secagg_when_asked", "secure_reply", "secure_seed_reply"]


def is_secure(msg: Message) -> bool:
    """Whether ``msg`` is a stage of a SecAgg+ round."""
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """``secaggplus_mod`` for the messages of a SecAgg+ round; the others pass straight through
    (the mod would reject a clear-text train message)."""
    if is_secure(msg):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def secure_reply(
    msg: Message, cfg: RunConfig, vector: np.ndarray, num_examples: int, records: dict[str, Any]
) -> Message:
    """``vector`` in the layout ``secaggplus_mod`` masks, with fedtune's clear ``records`` beside it.

    Under ``privacy.dp`` the vector is first clipped to L2 norm ``dp_clip`` (plus this client's
    noise share in distributed mode, all of the noise in local mode); then every value is
    clipped to ``+-scalar_clip``, SecAgg+'s range, and how many that changed goes into the
    metrics (``clipped-scalars``).

    Raises:
        ValueError: if the client's weight exceeds ``max_weight`` (SecAgg+ would scale its
            update above 1 and clip it): the client drops out of the round.
    """
    settings = SecAggSettings.from_config(cfg)
    weight = float(num_examples) if cfg.algorithm.weighting == "examples" else 1.0
    if weight > settings.max_weight:
        raise ValueError(
            f"this client's weight {weight} exceeds privacy.max_weight={settings.max_weight}: SecAgg+ "
            "would clip its update; raise privacy.max_weight"
        )
    if cfg.privacy.client_level:  # clipped to dp_clip, plus the noise this client adds (distributed, local)
        vector, _ = clip_and_noise(vector, cfg)
    clipped = int(np.count_nonzero(np.abs(vector) > settings.scalar_clip))
    vector = np.clip(vector, -settings.scalar_clip, settings.scalar_clip)  # within SecAgg+'s range
    content = fit_content(vector, int(weight))
    for key, record in records.items():
        content[key] = record
    metrics = content.get(wire.METRICS)
    if isinstance(metrics, MetricRecord) and not withheld_under_dp(cfg):  # a count of this client's entries
        metrics[wire.CLIPPED] = clipped
    return Message(content, reply_to=msg)


def secure_seed_reply(msg: Message, cfg: RunConfig, report: Any, metrics: MetricRecord) -> Message:
    """A FedKSeed report as the dense per-seed vector, plus fedtune's clear state and ``metrics``."""
    vector, _ = dense_seed_vector(report.keys, report.scalars, cfg.algorithm.num_candidates, math.inf)
    return secure_reply(msg, cfg, vector, report.num_examples, {
        # not the step list: that would be the update in clear
        wire.STATE: ConfigRecord({wire.ROUND: report.state_round, wire.DIGEST: report.digest}),
        wire.METRICS: metrics,
    })
