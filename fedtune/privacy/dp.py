"""Client-level differential privacy: clipping, Gaussian noise, and the accountant.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, https://arxiv.org/abs/1710.06963): each client's update is clipped to L2 norm
``C`` (``privacy.dp_clip``) and Gaussian noise of standard deviation ``z C`` (``z`` =
``privacy.noise_multiplier``) is added to the sum of the clipped updates, i.e. ``z C / n``
to their mean over ``n`` sampled clients. Clipping and the noise's scale are Flower's own
(``flwr.supercore.differential_privacy``: ``clip_inputs_inplace``, ``compute_stdv``,
``add_gaussian_noise_inplace``, the pieces behind its DP strategy wrappers and mods).

Two places to add the noise (``privacy.dp``):

- ``central``: the server adds it to the sum it got (from SecAgg+, or in clear); the server
  is trusted with the noiseless sum.
- ``distributed``: every client adds ``N(0, (z C)^2 / n)`` to its own clipped update, so
  the sum carries ``N(0, (z C)^2)``; under SecAgg+ the server never sees a noiseless sum.
  A client that drops out takes its share of the noise with it (the accountant assumes
  all ``n`` shares; see docs/privacy.md).

The guarantee (epsilon at ``privacy.dp_delta``) comes from the RDP accountant of Google's
``dp-accounting`` library, for ``rounds`` compositions of the Gaussian mechanism with
noise multiplier ``z`` on clients sampled at rate ``q = clients_per_round / num_clients``
(Poisson sampling at that rate, the usual approximation of fedtune's fixed-size sample).
Noise comes from numpy's global generator, seeded from OS entropy: a noise stream
reproducible from the run's config would be no noise to a server that knows the config.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, clip_inputs_inplace, compute_stdv

from fedtune.config import RunConfig

__all__ = ["RDP_ORDERS", "add_central_noise", "clip_and_noise", "epsilon"]

# Integer orders only: dp-accounting's fractional orders log a warning per order when
# their series does not converge (large q), and add little at these scales.
RDP_ORDERS = tuple(range(2, 257))


def clip_and_noise(vector: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, bool]:
    """A client's update as it leaves the client under ``privacy.dp``: clipped to L2 norm
    ``dp_clip``, plus its share of the noise in ``distributed`` mode.

    Returns:
        ``(float64 vector, whether the clip scaled it down)``.
    """
    p = cfg.privacy
    out = [np.array(vector, dtype=np.float64)]
    norm = float(np.linalg.norm(out[0]))
    if norm > 0:  # Flower's clip divides by the norm
        clip_inputs_inplace(out, p.dp_clip)
    if p.dp == "distributed":
        n = cfg.federation.clients_per_round
        # n shares of variance (z C / n)^2 x n each: their mean has std z C / n, as central's
        add_gaussian_noise_inplace(out, compute_stdv(p.noise_multiplier, p.dp_clip, n) * math.sqrt(n))
    return out[0], norm > p.dp_clip


def add_central_noise(mean: np.ndarray, cfg: RunConfig, num_summed: int) -> np.ndarray:
    """The server's noise on the mean of ``num_summed`` clipped updates (``central`` mode):
    standard deviation ``z C / num_summed``. Returns a new float64 array."""
    out = [np.array(mean, dtype=np.float64)]
    p = cfg.privacy
    add_gaussian_noise_inplace(out, compute_stdv(p.noise_multiplier, p.dp_clip, num_summed))
    return out[0]


def epsilon(cfg: RunConfig, rounds: int) -> float:
    """The run's epsilon at ``privacy.dp_delta`` after ``rounds`` rounds (RDP accountant).

    Raises:
        ValueError: if DP is off.
    """
    from dp_accounting import dp_event, rdp

    p, f = cfg.privacy, cfg.federation
    if p.dp == "none":
        raise ValueError("`privacy.dp` is 'none': there is no privacy budget to account")
    if p.noise_multiplier == 0:
        return math.inf
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    q = f.clients_per_round / f.num_clients
    event = dp_event.GaussianDpEvent(p.noise_multiplier)
    accountant.compose(dp_event.PoissonSampledDpEvent(q, event) if q < 1 else event, rounds)
    return float(accountant.get_epsilon(p.dp_delta))
