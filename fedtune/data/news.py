"""fedtune's harder generated text-classification task: who got good or bad news.

Ten classes, five domains (business, sports, politics, health, environment) times two
outcomes (good, bad news for that domain). Every sentence joins two reports of the same
shape: a *side* clause introduced by a connective (``while``, ``even as``, ``although``,
``whereas``), then the *main* clause, which alone decides the label. The task is built so
that what a frozen, mean-pooled sentence embedding keeps best (which words occur, not how
they are arranged) does not decide the label:

* **Every sentence holds good and bad news.** The side clause always has the outcome
  opposite to the main clause's, so the words of outcome ("recovered", "collapsed") in a
  sentence are always one of each, and say nothing about the label by their presence.
* **A sibling class is always in the sentence.** Half the time the side clause is about the
  same domain (the label's sibling class, same domain and other outcome), otherwise about
  another domain; so the domain words are often those of two domains.
* **Only syntax says which clause counts:** the one after the comma, not introduced by the
  connective. A main-first order ("X , while Y .") was tried and dropped: a linear probe on
  frozen all-MiniLM-L6-v2 embeddings reads those sentences' label far better (91 % against
  62 % for side-first ones), mean pooling apparently keeping the opening clause best.
* **Shared vocabulary.** The words of outcome, the reporting frames and the modifiers are
  common to all classes, a few sources ("officials", "analysts", "researchers") report in
  several domains, and quantities of different domains overlap in wording ("quarterly
  sales", "ticket sales"; "recovery rates", "recycling rates"): the domain rests on the
  quantity phrase.

An earlier design made the outcome an XOR inside the main clause (a quantity's valence
times its direction: "losses fell" is good news). Frozen probes failed on it, but so did
fine-tuning for long: training MiniLM's top two layers (8,000 examples, batch 32), the
outcome stayed at chance for 1,750 steps and reached 64 % after 2,000, where this design
is at 100 % after 500. It was dropped: federated runs are short.

The label is still a deterministic function of the text, with no noise: take the clause
after the comma, read its quantity (the domain) and what happened to it (the outcome). A
model that reads the sentence (a fine-tuned encoder, a person) can get every example
right; no quantity or outcome phrase is in two lists, so no sentence has two labels.

An example::

    prompt:   "although the airline reported that revenue declined last month , analysts
               reported that profits recovered this quarter ." (one line)
    response: ""
    label:    0  (business-good: the main clause says profits recovered; the side clause,
                 revenue worsening, is the sibling class business-bad)

Torch-free, like the rest of :mod:`fedtune.data` apart from ``batches``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedtune import rng

from .tasks import Example

__all__ = ["NEWS_CLASSES", "NEWS_LABEL_NAMES", "generate_news"]

logger = logging.getLogger(__name__)

_DOMAINS: tuple[str, ...] = ("business", "sports", "politics", "health", "environment")
_OUTCOMES: tuple[str, ...] = ("good", "bad")

NEWS_CLASSES: tuple[str, ...] = tuple(f"{domain}-{outcome}" for domain in _DOMAINS for outcome in _OUTCOMES)
"""The classes, domain-major: ``"business-good"``, ``"business-bad"``, ``"sports-good"``, ...;
an example's ``label`` is its class's index in this tuple (``2 * domain + outcome``)."""

NEWS_LABEL_NAMES: tuple[str, ...] = (
    "good news for a company",
    "bad news for a company",
    "good news for a sports team",
    "bad news for a sports team",
    "good news for the government",
    "bad news for the government",
    "good news for public health",
    "bad news for public health",
    "good news for the environment",
    "bad news for the environment",
)
"""A short natural-language name per class, in :data:`NEWS_CLASSES` order (for zero-shot
classification by similarity to the names)."""

# Per domain: who reports, and what is reported on (quantities where more is better, so
# that "improved" is good news for every one of them). No quantity is in two domains.
_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "business": {
        "source": (
            "the retailer", "the carmaker", "the bank", "the airline", "the chief executive",
            "analysts",
        ),
        "quantity": (
            "profits", "quarterly sales", "its share price", "revenue", "new orders",
            "its market share",
        ),
    },
    "sports": {
        "source": (
            "the club", "the head coach", "the league", "the champions", "the captain",
            "analysts",
        ),
        "quantity": (
            "ticket sales", "the team's form", "home attendance", "its league position",
            "the squad's fitness", "its goal tally",
        ),
    },
    "politics": {
        "source": (
            "the government", "the ruling party", "the prime minister", "pollsters",
            "the opposition", "officials",
        ),
        "quantity": (
            "approval ratings", "voter support", "its poll lead", "public trust",
            "party membership", "relations with parliament",
        ),
    },
    "health": {
        "source": (
            "the hospital", "the health ministry", "doctors", "the clinic", "researchers",
            "officials",
        ),
        "quantity": (
            "recovery rates", "vaccination rates", "survival rates", "staffing levels",
            "life expectancy", "hospital capacity",
        ),
    },
    "environment": {
        "source": (
            "the environment agency", "climate scientists", "conservationists",
            "the city council", "researchers", "analysts",
        ),
        "quantity": (
            "forest cover", "fish stocks", "air quality", "bee populations",
            "recycling rates", "water quality",
        ),
    },
}

# What happened to the quantity, shared by every domain; index 0 = good news, 1 = bad.
_CHANGES: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "improved", "recovered", "got better", "beat expectations", "rose to a record high",
        "picked up", "bounced back", "grew strongly",
    ),
    (
        "worsened", "collapsed", "declined", "missed expectations", "fell to a record low",
        "slipped", "deteriorated", "shrank sharply",
    ),
)
_MODIFIERS: tuple[str, ...] = (
    "this year", "last month", "for a third month", "since january", "across the country",
    "again", "this quarter", "after the holidays",
)
_CLAUSES: tuple[str, ...] = (
    "{source} said {quantity} {change} {modifier}",
    "{source} reported that {quantity} {change} {modifier}",
    "figures from {source} show {quantity} {change} {modifier}",
)
# The side clause first, introduced by a connective; the main clause last. (Main-first
# orders were tried: a frozen mean-pooled embedding reads the label off them far better,
# see the module docstring.)
_TEMPLATES: tuple[str, ...] = (
    "while {side} , {main} .",
    "even as {side} , {main} .",
    "although {side} , {main} .",
    "whereas {side} , {main} .",
)
# Columns of a clause: source, quantity, change, modifier, clause shape.
_CLAUSE_COLUMNS = 5
# Columns of a row: class, template, side domain (2), then the main and the side clause.
_COLUMNS = 4 + 2 * _CLAUSE_COLUMNS


def _clause(label: int, u: Sequence[float]) -> str:
    """The clause reporting news of class ``label``, its words picked by the uniforms ``u``."""
    domain, outcome = divmod(label, len(_OUTCOMES))
    words = _WORDS[_DOMAINS[domain]]
    changes = _CHANGES[outcome]
    return _CLAUSES[int(u[4] * len(_CLAUSES))].format(
        source=words["source"][int(u[0] * len(words["source"]))],
        quantity=words["quantity"][int(u[1] * len(words["quantity"]))],
        change=changes[int(u[2] * len(changes))],
        modifier=_MODIFIERS[int(u[3] * len(_MODIFIERS))],
    )


def generate_news(num_examples: int, seed: int) -> list[Example]:
    """Generate the good/bad-news task deterministically from ``seed``.

    Example ``i`` is decided by row ``i`` of a ``(num_examples, 14)`` matrix of uniform
    ``[0, 1)`` floats from ``fedtune.rng.generator(seed, "news")``: column 0 picks the class
    (uniformly), column 1 the connective, columns 2-3 the side clause's domain (with
    probability 1/2 the same domain, else a uniformly drawn other one; its outcome is always
    the other outcome), columns 4-8 the main clause's words and 9-13 the side clause's
    (source, quantity, outcome phrase, modifier, clause shape). Rows are filled one by one,
    so ``generate_news(n, s)`` is a prefix of ``generate_news(m, s)`` for ``n <= m``.

    Args:
        num_examples: how many examples, >= 1.
        seed: the data seed.

    Returns:
        Examples with the sentence as ``prompt``, an empty ``response`` and ``label`` the
        index of the class in :data:`NEWS_CLASSES`.

    Raises:
        TypeError, ValueError: on a bad argument.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        raise TypeError(f"`num_examples` must be an int, got {type(num_examples).__name__} {num_examples!r}")
    if num_examples < 1:
        raise ValueError(f"`num_examples` must be >= 1, got {num_examples}")

    uniform = rng.generator(seed, "news").random((num_examples, _COLUMNS))
    num_classes = len(NEWS_CLASSES)
    num_domains, num_outcomes = len(_DOMAINS), len(_OUTCOMES)
    examples = []
    for row in uniform:
        label = int(row[0] * num_classes)
        domain, outcome = divmod(label, num_outcomes)
        side_domain = domain  # the sibling class: same domain, the other outcome
        if row[2] >= 0.5:
            side_domain = (domain + 1 + int(row[3] * (num_domains - 1))) % num_domains
        side = side_domain * num_outcomes + (1 - outcome)
        template = _TEMPLATES[int(row[1] * len(_TEMPLATES))]
        prompt = template.format(
            main=_clause(label, row[4 : 4 + _CLAUSE_COLUMNS]), side=_clause(side, row[4 + _CLAUSE_COLUMNS :])
        )
        examples.append(Example(prompt=prompt, response="", label=label))
    return examples
