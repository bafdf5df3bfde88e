"""The privacy budget: every DP release of a run, and the epsilon they add up to.

A *release* is one noised sum of clipped client vectors (:mod:`fedtune.privacy.dp`): one
a round, two for two-phase LoRA-FAIR. Epsilon at ``privacy.dp_delta`` comes from the RDP
accountant of Google's ``dp-accounting`` library.

**Neighbouring relation: replace one client.** Two federations are neighbours when one
client's data differs; the number of clients N is public (fedtune samples a fixed number
n of them a round). Replacing a client's data moves its clipped vector, and so the sum, by
up to ``2 C`` in L2. dp-accounting's noise multiplier is "the ratio of the standard
deviation of the Gaussian noise to the l2-sensitivity" and, under ``REPLACE_ONE``, that
sensitivity is the replace-one one (its sampled-without-replacement RDP is Wang, Balle,
Kasiviswanathan, AISTATS 2019, Thm. 27, for a base Gaussian of unit replace-one
sensitivity). A sum whose noise has std ``m C`` is therefore given to the library as
multiplier ``m / 2``: at the same z, epsilon is larger than under add/remove-one
(sensitivity C).

**Sampling amplifies only against whoever does not know the sample.**

- ``central``: the server draws each round's sample from OS entropy
  (:meth:`fedtune.server.rounds.RoundLoop.sample`), so no one else knows who took part; a round is
  ``SampledWithoutReplacementDpEvent(N, n, its releases composed)``, the fixed-size sample
  fedtune really draws (not a Poisson approximation of it). LoRA-FAIR's two sums of a round
  share one sample: they are composed inside the one sampled event.
- ``distributed`` and ``local``: the privacy is meant to hold against the server, which
  picks the sample: no amplification. Each client's releases compose as plain Gaussian
  mechanisms and the reported epsilon is the worst client's (for ``local``, where every
  release has multiplier z, the client that took part most often).
- ``sample`` (example-level, :mod:`fedtune.privacy.sample`): the neighbours are one
  client's datasets that differ in one example, and each client is accounted on its own.
  A local step releases, per direction, the mean of ``B`` clipped per-example scalars with
  noise ``sigma C / B``: on the sum, std ``sigma C`` against a replace-one sensitivity
  ``2 C``, so ``GaussianDpEvent(sigma / 2)`` (q directions on one batch: q of them,
  composed). The step's rows are ``B = min(batch_size, N)`` of the client's ``N``
  examples, drawn uniformly without replacement from OS entropy afresh each step: a
  ``SampledWithoutReplacementDpEvent(N, B, ...)``, the sampling the client really does
  (``B = N``: no amplification). A client that trained in r rounds composes ``r x
  local_steps`` of these (every step releases: none is skipped). N is the size of the
  client's share of the data, which every party computes from the config. The reported
  epsilon is the worst client's: per N, the client that trained most often.

Every round's releases are appended to ``<run dir>/privacy.jsonl`` (fsync'ed) before the
round's update is applied, and a resumed run rebuilds the accountant from that file: a
round that crashed after its sum was formed counts, and so does its re-run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.config import RunConfig
from fedtune.runs import atomic_write

__all__ = ["LEDGER_FILE", "RDP_ORDERS", "PrivacyLedger", "Release", "ledger_for"]

log = logging.getLogger(__name__)

LEDGER_FILE = "privacy.jsonl"

# Integer orders only (dp-accounting's fractional orders log a warning per order when their
# series does not converge at large q). The sampled-without-replacement RDP costs O(order^2)
# per order up to 256: every order to 64, then a sparse tail (about 0.3 s an event on 2
# cores, instead of 5 s for every integer to 256); above 256 the library's bound is cheap.
RDP_ORDERS = (*range(2, 65), 80, 96, 128, 160, 192, 256, 512, 1024)


@dataclass(frozen=True)
class Release:
    """One round's noised sums, as the accountant needs them.

    Attributes:
        round: the round.
        population: N, the clients the round's sample was drawn from.
        sampled: n, the clients sampled.
        noise_multipliers: per sum released this round, the std of the noise protecting
            one client's vector in it over C (:func:`fedtune.privacy.dp.noise_multiplier`).
        clients: per sum, the partition ids of the clients in it; empty under ``central``
            (its sample stays secret and its accounting does not need it). Under ``sample``
            one "sum": the clients that trained, each releasing its own steps.
        examples: ``sample`` only: per client of ``clients[0]``, its number of examples N.
    """

    round: int
    population: int
    sampled: int
    noise_multipliers: tuple[float, ...]
    clients: tuple[tuple[int, ...], ...] = ()
    examples: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, line: str) -> Release:
        raw = json.loads(line)
        return cls(int(raw["round"]), int(raw["population"]), int(raw["sampled"]),
                   tuple(float(m) for m in raw["noise_multipliers"]),
                   tuple(tuple(int(c) for c in ids) for ids in raw["clients"]),
                   tuple(int(n) for n in raw.get("examples", ())))


class PrivacyLedger:
    """The run's releases, kept on disk, and the epsilon they add up to.

    Args:
        cfg: the run's configuration (``privacy.dp`` is not ``"none"``).
        path: the ledger file (appended, fsync'ed; read back if it exists). None: memory only.

    Raises:
        ValueError: if ``privacy.dp`` is ``"none"``.
    """

    def __init__(self, cfg: RunConfig, path: Path | None = None) -> None:
        if cfg.privacy.dp == "none":
            raise ValueError("`privacy.dp` is 'none': there is no privacy budget to account")
        self.mode, self.delta, self.path = cfg.privacy.dp, cfg.privacy.dp_delta, path
        a = cfg.algorithm
        self._steps = (a.local_steps, a.directions, a.batch_size)  # sample: a round's steps, their q, the batch
        self.releases: list[Release] = []
        self._sampled_rounds = _accountant()
        self._per_client: defaultdict[int, list[float]] = defaultdict(list)  # partition id -> its multipliers
        self._examples: dict[int, int] = {}  # sample: partition id -> its N
        if path is not None and path.is_file():
            self._read_back(path)

    def _read_back(self, path: Path) -> None:
        """Account every release in ``path``; a torn last line (the crash came while it was
        written, so its round was never applied) is dropped from the file too."""
        text = path.read_text(encoding="utf-8")
        kept = []
        for line in text.splitlines():
            try:
                self._add(Release.from_json(line))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: dropping an unreadable line", path)
                continue
            kept.append(line + "\n")
        if "".join(kept) != text:  # rewritten, so the next record starts on a line of its own
            atomic_write(path, "".join(kept))

    def record(self, release: Release) -> None:
        """Append ``release`` (durably, when the ledger has a file) and account it."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(dataclasses.asdict(release)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self._add(release)

    def _add(self, release: Release) -> None:
        from dp_accounting import dp_event

        self.releases.append(release)
        if self.mode == "sample":
            if len(release.clients) != 1 or len(release.clients[0]) != len(release.examples):
                raise ValueError(f"round {release.round}: an example-level release needs one client list and "
                                 f"one example count per client, got {release.clients} and {release.examples}")
            for client, n in zip(release.clients[0], release.examples, strict=True):
                self._per_client[client].append(release.noise_multipliers[0])
                self._examples[client] = n
            return
        if self.mode != "central":
            for multiplier, clients in zip(release.noise_multipliers, release.clients, strict=True):
                for client in clients:
                    self._per_client[client].append(multiplier)
            return
        sums = _gaussians(release.noise_multipliers)
        if 0 not in release.noise_multipliers:  # (a sum without noise is no privacy, sampled or not)
            sums = dp_event.SampledWithoutReplacementDpEvent(release.population, release.sampled, sums)
        self._sampled_rounds.compose(sums)

    def epsilon(self) -> float:
        """Epsilon at ``privacy.dp_delta`` over every release so far (0 before the first)."""
        if self.mode == "central":
            return float(self._sampled_rounds.get_epsilon(self.delta))
        if not self._per_client:
            return 0.0
        if self.mode == "sample":
            # RDP adds up and grows with every count: per N, the most rounds any client trained
            # at each sigma bound every such client (exactly, as sigma is the config's one value)
            envelopes: defaultdict[int, dict[float, int]] = defaultdict(dict)  # N -> sigma -> rounds
            for client, multipliers in self._per_client.items():
                envelope = envelopes[self._examples[client]]
                for sigma in set(multipliers):
                    envelope[sigma] = max(envelope.get(sigma, 0), multipliers.count(sigma))
            steps, directions, batch_size = self._steps
            return max(_sample_epsilon(n, min(batch_size, n), tuple(sorted(rounds.items())), steps, directions,
                                       self.delta) for n, rounds in envelopes.items())
        # Gaussian RDP is alpha / (2 sigma^2): additive in sigma^-2, so the client with the
        # largest sum of (m / 2)^-2 has the largest RDP at every order, and so the largest epsilon.
        worst = max(self._per_client.values(), key=lambda ms: sum(math.inf if m == 0 else (m / 2) ** -2 for m in ms))
        accountant = _accountant()
        accountant.compose(_gaussians(worst))
        return float(accountant.get_epsilon(self.delta))


def _accountant() -> Any:
    """dp-accounting's RDP accountant at :data:`RDP_ORDERS`, replace-one neighbours."""
    from dp_accounting import rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    return rdp.RdpAccountant(list(RDP_ORDERS), NeighboringRelation.REPLACE_ONE)


def _gaussians(multipliers: Sequence[float]) -> Any:
    """Sums with noise std ``m C`` as one dp-accounting event: Gaussians of multiplier ``m / 2``
    (replace-one sensitivity 2C), or no privacy at all if one sum had no noise."""
    from dp_accounting import dp_event

    if 0 in multipliers:
        return dp_event.NonPrivateDpEvent()
    return dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(m / 2) for m in multipliers])


@functools.lru_cache(maxsize=256)
def _sample_epsilon(examples: int, batch: int, rounds: tuple[tuple[float, int], ...], steps: int, directions: int,
                    delta: float) -> float:
    """Epsilon at ``delta`` of example-level DP on a client of ``examples`` rows that trained
    ``r`` rounds of ``steps`` steps at noise multiplier sigma, for each ``(sigma, r)`` of
    ``rounds``. A step samples ``batch`` rows without replacement and releases
    ``directions`` scalars, each with noise ``sigma C`` on its sum (replace-one sensitivity
    2C). Cached: one sampled event costs about 0.6 s (2 cores), and most of a round's
    questions were asked before."""
    from dp_accounting import dp_event

    if any(sigma == 0 for sigma, _ in rounds):
        return math.inf
    accountant = _accountant()
    for sigma, count in rounds:
        step = dp_event.SampledWithoutReplacementDpEvent(examples, batch, _gaussians([sigma] * directions))
        accountant.compose(dp_event.SelfComposedDpEvent(step, count * steps))
    return float(accountant.get_epsilon(delta))


def ledger_for(cfg: RunConfig, run_dir: Path | None) -> PrivacyLedger | None:
    """The run's ledger (``<run dir>/privacy.jsonl``, read back on resume), or None without DP."""
    if cfg.privacy.dp == "none":
        return None
    return PrivacyLedger(cfg, run_dir / LEDGER_FILE if run_dir is not None else None)
