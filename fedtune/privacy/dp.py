"""Client-level differential privacy: clipping and Gaussian noise (the accountant: :mod:`.accounting`).

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, https://arxiv.org/abs/1710.06963): each client's update vector (the vector
SecAgg+ sums, :mod:`fedtune.privacy.secagg`) is clipped to L2 norm ``C``
(``privacy.dp_clip``) and Gaussian noise of standard deviation ``z C`` (``z`` =
``privacy.noise_multiplier``) protects it. Clipping and the noise's scale are Flower's own
building blocks (``flwr.supercore.differential_privacy``: ``clip_inputs_inplace``,
``compute_stdv``, the pieces behind its DP strategy wrappers and mods); the noise itself
comes from a generator of its own (below).

Who adds the noise (``privacy.dp``):

- ``central``: the server adds ``N(0, (z C)^2)`` to the sum (``z C / n`` on the mean of
  ``n`` clipped updates): to SecAgg+'s sum, whose vectors the clients clipped, or on the
  clear path to the mean of the updates it clipped itself (:func:`private_mean`). Clear
  updates are clipped at the server, as Flower's ``DifferentialPrivacyServerSideFixedClipping``
  does: the server is trusted with them in this mode and sees them either way, a client
  cannot skip a clip the server applies, and FedKSeed's uplink stays a few bytes a step
  instead of a dense ``(K,)`` vector.
- ``distributed`` (SecAgg+ only): each of the ``n = clients_per_round`` clients adds
  ``N(0, (z C)^2 / n)`` to its own clipped vector; the sum of all n carries
  ``N(0, (z C)^2)`` and the server never sees a noiseless sum. A client that drops out takes
  its share with it: :func:`noise_multiplier` is the round's actual ``z sqrt(s / n)``.
- ``local``: each client adds the full ``N(0, (z C)^2)`` to its own clipped vector, which
  is then private on its own, whoever sees it (with SecAgg+ or in clear).

Flower's ``LocalDpMod`` is not used for ``local``: it reads the legacy ``FitIns`` /
``FitRes`` parameter arrays (fedtune's train messages carry a seed log or an adapter
bundle, and a FedKSeed update is per-seed scalars, not parameters) and calibrates its noise
from a per-release (epsilon, delta) with the classic bound (valid for epsilon < 1) rather
than from a multiplier that the RDP accountant composes over rounds. The clipping and scale it
uses are the ones used here.

**Where the noise comes from.** Every draw takes a fresh generator seeded from OS entropy
(:func:`fedtune.rng.secret_generator`: numpy's PCG64 under a 128-bit ``SeedSequence`` from
``os.urandom``), never numpy's or torch's global state (Flower's
``add_gaussian_noise_inplace`` draws from numpy's process-wide Mersenne Twister, which any
library can seed, and which a forked worker inherits, so two forked clients would add the
same noise). A noise stream reproducible from the run's config would be no noise to anyone
who knows the config, so DP runs are not bit-reproducible, by design.

**Floating-point attacks.** Mironov ("On Significance of the Least Significant Bits for
Differential Privacy", CCS 2012) showed that textbook floating-point samplers leak through
the low-order bits of the noised value: not every double is reachable from every input.
fedtune does not implement the snapping mechanism or an exact sampler. Under SecAgg+
(``distributed``), each noised vector is quantised to SecAgg+'s integer grid before it
leaves the client, which discards the low-order bits the attack reads, but that is an
argument, not a proof; the distributed-DP habit is a discrete Gaussian drawn on that integer
grid (Canonne, Kamath and Steinke 2020; Kairouz, Liu and Steinke 2021), which composes with
the modular sum exactly. It is not here yet. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedtune._flwr_compat import clip_inputs_inplace, compute_stdv
from fedtune.config import RunConfig
from fedtune.privacy.secagg import dense_seed_vector
from fedtune.rng import secret_generator

__all__ = ["add_central_noise", "clip_and_noise", "noise_multiplier", "noised_seed_steps", "private_mean"]


def _add_gaussian_(vector: np.ndarray, std: float) -> None:
    """In place: ``vector += N(0, std^2)`` per element, from a fresh OS-entropy generator."""
    vector += secret_generator().normal(0.0, std, size=vector.shape)


def _clipped(vector: np.ndarray, clip: float) -> tuple[np.ndarray, bool]:
    """``vector`` as float64, scaled to L2 norm ``clip`` if it is longer; whether it was."""
    out = [np.array(vector, dtype=np.float64)]
    norm = float(np.linalg.norm(out[0]))
    if norm > 0:  # Flower's clip divides by the norm
        clip_inputs_inplace(out, clip)
    return out[0], norm > clip


def clip_and_noise(vector: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, bool]:
    """A client's update as it leaves the client under ``privacy.dp``: clipped to L2 norm
    ``dp_clip``, plus its share of the noise (``distributed``) or all of it (``local``).

    Returns:
        ``(float64 vector, whether the clip scaled it down)``.
    """
    p = cfg.privacy
    out, clipped = _clipped(vector, p.dp_clip)
    if p.dp == "distributed":
        n = cfg.federation.clients_per_round
        # n shares of variance (z C / n)^2 x n each: their sum has std z C, as central's
        _add_gaussian_(out, compute_stdv(p.noise_multiplier, p.dp_clip, n) * math.sqrt(n))
    elif p.dp == "local":
        _add_gaussian_(out, compute_stdv(p.noise_multiplier, p.dp_clip, 1))
    return out, clipped


def noised_seed_steps(keys: np.ndarray, scalars: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """A FedKSeed client's steps under local DP on the clear path: its dense per-seed vector,
    clipped and noised, as one step per candidate, so it travels in the usual step list.

    Args:
        keys, scalars: the client's steps, ``uint64 (n,)`` candidates and ``float32 (n,)`` g.

    Returns:
        ``(keys uint64 (K,) = 0..K-1, scalars float32 (K,))``.
    """
    k = cfg.algorithm.num_candidates
    vector, _ = clip_and_noise(dense_seed_vector(keys, scalars, k, math.inf)[0], cfg)
    return np.arange(k, dtype=np.uint64), vector.astype(np.float32)


def add_central_noise(mean: np.ndarray, cfg: RunConfig, num_summed: int) -> np.ndarray:
    """The server's noise on the mean of ``num_summed`` clipped updates (``central`` mode):
    standard deviation ``z C / num_summed``. Returns a new float64 array."""
    out = np.array(mean, dtype=np.float64)
    p = cfg.privacy
    _add_gaussian_(out, compute_stdv(p.noise_multiplier, p.dp_clip, num_summed))
    return out


def private_mean(vectors: Sequence[np.ndarray], cfg: RunConfig) -> np.ndarray:
    """The server's uniform mean of clear update vectors under ``privacy.dp``.

    ``central``: each vector clipped to ``dp_clip`` here, the mean noised with ``z C / n``.
    ``local``: the clients clipped and noised their vectors; the mean is taken as is.

    Args:
        vectors: one float vector per client, all of one length ``(L,)``.

    Returns:
        float64 ``(L,)``.

    Raises:
        ValueError: if there is no vector, or ``privacy.dp`` is not one of these two.
    """
    mode = cfg.privacy.dp
    if mode not in ("central", "local"):
        raise ValueError(f"a clear-text private mean needs privacy.dp 'central' or 'local', got {mode!r}")
    if not vectors:
        raise ValueError("`vectors` is empty: no client update to average")
    if mode == "local":
        return np.mean(np.asarray(vectors, dtype=np.float64), axis=0)
    clipped = [_clipped(v, cfg.privacy.dp_clip)[0] for v in vectors]
    return add_central_noise(np.mean(clipped, axis=0), cfg, len(clipped))


def noise_multiplier(cfg: RunConfig, num_summed: int) -> float:
    """The noise protecting one client's clipped vector in a sum of ``num_summed``, over ``C``.

    ``z`` for ``central`` (the server's noise on the sum) and ``local`` (each client's own);
    ``z sqrt(num_summed / clients_per_round)`` for ``distributed``, whose sum carries only the
    noise shares of the clients in it.
    """
    p = cfg.privacy
    if p.dp == "distributed":
        return p.noise_multiplier * math.sqrt(num_summed / cfg.federation.clients_per_round)
    return p.noise_multiplier
