"""fedtune's harder generated text-classification task: who got good or bad news.

Ten classes, five domains (business, sports, politics, health, environment) times two
outcomes (good, bad news for that domain). Every sentence reports one or two changes, a
*main* clause and, usually, a *side* clause joined by ``while`` or ``even as``; only the
main clause decides the label. The task is built so that what a frozen, mean-pooled
sentence embedding keeps (roughly, which words occur) does not decide the label:

* **The outcome is an interaction of two words.** A clause says that a quantity moved
  ("profits fell", "losses fell"). Whether that is good or bad news is the quantity's
  valence (profits are good, losses bad) times the direction of the move (up, down). Every
  domain has as many good quantities as bad ones and every quantity moves up as often as
  down, so neither word alone says anything about the outcome: it is an XOR, which no
  linear function of word counts can represent.
* **A sibling class is always in the sentence.** The side clause has exactly the shape of a
  main clause and is drawn from another class: half the time the same domain with the
  opposite outcome, otherwise another domain. Which clause is the main one is decided by
  syntax only (the clause not introduced by the connective), and the side clause comes
  first as often as last, so word counts cannot tell which domain is the label's.
* **Shared vocabulary.** The verbs of change, the reporting frames and the modifiers are
  common to all classes, a few sources ("officials", "analysts", "researchers") report in
  several domains, and sibling quantities overlap in wording ("quarterly sales", "ticket
  sales"), so the domain rests on the quantity phrase.

The label is still a deterministic function of the text, with no noise: find the clause
not introduced by ``while``/``even as``, read its quantity and its direction, and look both
up. A model that reads the sentence (a fine-tuned encoder, a person) can get every example
right; the quantity and direction lists never overlap, so no sentence has two labels.

An example::

    prompt:   "while the airline said new orders fell this year , the bank said losses fell
               for a third month ." (one line)
    response: ""
    label:    0  (business-good: the main clause is the bank's, and losses fell; the side
                 clause, orders falling, is its sibling business-bad)

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

# Per domain: who reports, and the quantities whose rise is good news ("good") and whose
# rise is bad news ("bad"). The two valences have the same number of entries, so that a
# quantity says nothing about the outcome. No quantity appears in two lists.
_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "business": {
        "source": (
            "the retailer", "the carmaker", "the bank", "the airline", "the chief executive",
            "analysts",
        ),
        "good": (
            "profits", "quarterly sales", "its share price", "revenue", "new orders",
            "its market share",
        ),
        "bad": (
            "losses", "its debts", "operating costs", "job cuts", "customer complaints",
            "product recalls",
        ),
    },
    "sports": {
        "source": (
            "the club", "the head coach", "the league", "the champions", "the captain",
            "analysts",
        ),
        "good": (
            "ticket sales", "its points total", "home attendance", "its goal tally",
            "the team's win rate", "sponsorship income",
        ),
        "bad": (
            "injuries", "goals conceded", "red cards", "fines from the league",
            "player suspensions", "home defeats",
        ),
    },
    "politics": {
        "source": (
            "the government", "the ruling party", "the prime minister", "pollsters",
            "the opposition", "officials",
        ),
        "good": (
            "approval ratings", "voter support", "its poll lead", "public trust",
            "party membership", "donations",
        ),
        "bad": (
            "street protests", "ministerial resignations", "corruption complaints",
            "defections", "strikes", "calls for a snap election",
        ),
    },
    "health": {
        "source": (
            "the hospital", "the health ministry", "doctors", "the clinic", "researchers",
            "officials",
        ),
        "good": (
            "recovery rates", "vaccination rates", "survival rates", "the number of nurses",
            "life expectancy", "hospital beds available",
        ),
        "bad": (
            "infections", "hospital admissions", "deaths from the flu", "waiting times",
            "measles cases", "overdoses",
        ),
    },
    "environment": {
        "source": (
            "the environment agency", "climate scientists", "conservationists",
            "the city council", "researchers", "analysts",
        ),
        "good": (
            "forest cover", "fish stocks", "bee populations", "recycling rates",
            "solar power output", "sea ice",
        ),
        "bad": (
            "carbon emissions", "air pollution", "plastic waste", "wildfires",
            "sea temperatures", "oil spills",
        ),
    },
}

# Verbs of change, shared by every class; index 0 = up, 1 = down.
_DIRECTIONS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("rose", "climbed", "jumped", "increased", "surged", "grew", "doubled", "went up"),
    ("fell", "dropped", "declined", "slumped", "shrank", "halved", "eased", "went down"),
)
_MODIFIERS: tuple[str, ...] = (
    "sharply", "slightly", "this year", "last month", "for a third month", "since january",
    "across the country", "again",
)
_CLAUSES: tuple[str, ...] = (
    "{source} said {quantity} {verb} {modifier}",
    "{source} reported that {quantity} {verb} {modifier}",
    "figures from {source} show {quantity} {verb} {modifier}",
)
# The main clause is the one not introduced by a connective.
_TEMPLATES: tuple[str, ...] = (
    "{main} , while {side} .",
    "while {side} , {main} .",
    "{main} , even as {side} .",
    "even as {side} , {main} .",
    "{main} .",
)
# Columns of a clause: source, quantity, valence, verb, modifier, clause shape.
_CLAUSE_COLUMNS = 6
# Columns of a row: class, template, side class (2), then the main and the side clause.
_COLUMNS = 4 + 2 * _CLAUSE_COLUMNS


def _clause(label: int, u: Sequence[float]) -> str:
    """The clause reporting news of class ``label``, its words picked by the uniforms ``u``.

    The quantity's valence (good, bad) is drawn; the direction follows from it and the
    class's outcome: up when the valence matches the outcome, down when it does not.
    """
    domain, outcome = divmod(label, len(_OUTCOMES))
    words = _WORDS[_DOMAINS[domain]]
    valence = int(u[2] * 2)
    quantities = words[_OUTCOMES[valence]]
    direction = 0 if valence == outcome else 1
    verbs = _DIRECTIONS[direction]
    return _CLAUSES[int(u[5] * len(_CLAUSES))].format(
        source=words["source"][int(u[0] * len(words["source"]))],
        quantity=quantities[int(u[1] * len(quantities))],
        verb=verbs[int(u[3] * len(verbs))],
        modifier=_MODIFIERS[int(u[4] * len(_MODIFIERS))],
    )


def generate_news(num_examples: int, seed: int) -> list[Example]:
    """Generate the good/bad-news task deterministically from ``seed``.

    Example ``i`` is decided by row ``i`` of a ``(num_examples, 16)`` matrix of uniform
    ``[0, 1)`` floats from ``fedtune.rng.generator(seed, "news")``: column 0 picks the class
    (uniformly), column 1 the template, columns 2-3 the side clause's class (with
    probability 1/2 the same domain with the opposite outcome, else a uniformly drawn other
    domain and outcome), columns 4-9 the main clause's words and 10-15 the side clause's
    (source, quantity, valence, verb, modifier, clause shape). One template in five has no
    side clause. Rows are filled one by one, so ``generate_news(n, s)`` is a prefix of
    ``generate_news(m, s)`` for ``n <= m``.

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
        if row[2] < 0.5:
            side = domain * num_outcomes + (1 - outcome)  # the sibling: same domain, other outcome
        else:
            other = (domain + 1 + int(row[3] * (num_domains - 1))) % num_domains
            side = other * num_outcomes + int((row[3] * 997) % 1 * num_outcomes)
        main_words = row[4 : 4 + _CLAUSE_COLUMNS]
        side_words = row[4 + _CLAUSE_COLUMNS :]
        template = _TEMPLATES[int(row[1] * len(_TEMPLATES))]
        prompt = template.format(main=_clause(label, main_words), side=_clause(side, side_words))
        examples.append(Example(prompt=prompt, response="", label=label))
    return examples
