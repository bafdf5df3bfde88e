"""What a client says about its round in clear, beside its update (docs/privacy.md).

Without DP a client reports its number of examples, its mean train loss, the local steps it
skipped for a non-finite loss and (ZO) its replay speed: the server logs them and weights by
the first. Each depends on the client's data (or on its machine), and none of them is in
what the accountant counts; so under ``privacy.dp`` a client sends **none** of them. DP needs
uniform weights anyway (fedtune.config), so the server does not need the example count, and
metrics.jsonl has no train loss for a DP run: the eval loss on the server's own data is the
one loss it reports.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import MetricRecord

from fedtune.config import RunConfig

__all__ = ["client_metrics", "withheld_under_dp"]


def withheld_under_dp(cfg: RunConfig) -> bool:
    """Whether clients keep their data-dependent metrics to themselves (``privacy.dp`` on)."""
    return cfg.privacy.dp != "none"


def client_metrics(cfg: RunConfig, values: Mapping[str, int | float]) -> MetricRecord:
    """The metrics record a client's reply carries: ``values``, or nothing under DP."""
    return MetricRecord({} if withheld_under_dp(cfg) else dict(values))
