"""fedtune's generated text-classification task: short news sentences in four topics.

An AG News-shaped task (world, sports, business, science/tech) built from templates and
word lists, so tests and benchmarks need no download. Each sentence fills a template's
slots (subject, action, object, setting) mostly from its topic's lists; a fraction of the
slots take a word from another topic, and several words belong to more than one topic
("record", "launch", "campaign", "trial"), so no single word decides the label. A
pretrained encoder knows that "striker" and "goalkeeper" are related; a model trained from
scratch has to learn every word from the few examples it sees, which is what makes the
task a fair test of fine-tuning pretrained models.

An example::

    prompt:   "the striker scored a late equaliser during the derby ."
    response: ""
    label:    1  (sports)

Torch-free, like the rest of :mod:`fedtune.data` apart from ``batches``.
"""

from __future__ import annotations

import logging

from fedtune import rng

from .tasks import Example

__all__ = ["TOPICS", "TOPIC_LABEL_NAMES", "generate_topics"]

logger = logging.getLogger(__name__)

TOPICS: tuple[str, ...] = ("world", "sports", "business", "science")
"""The classes; an example's ``label`` is its topic's index in this tuple."""

TOPIC_LABEL_NAMES: tuple[str, ...] = (
    "world politics news", "sports news", "business and economy news", "science and technology news",
)
"""A natural-language name per class, for a head that starts from the label names."""

# Per topic: subjects, actions (verb phrases), objects, settings. Some entries are shared
# across topics on purpose (see the module docstring).
_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "world": {
        "subject": (
            "the prime minister", "the president", "rebel leaders", "the foreign minister",
            "un peacekeepers", "the opposition party", "protesters", "the ambassador",
            "the parliament", "election officials", "the military junta", "refugees",
            "the coalition government", "diplomats", "the defence ministry", "villagers",
        ),
        "action": (
            "signed", "rejected", "condemned", "negotiated", "called for", "announced",
            "protested against", "voted on", "withdrew from", "demanded", "backed",
            "delayed", "won", "launched",
        ),
        "object": (
            "a ceasefire agreement", "the peace treaty", "new sanctions", "the border deal",
            "emergency aid", "the referendum results", "a humanitarian corridor",
            "the election", "troop withdrawals", "the constitution", "a campaign",
            "the nuclear talks", "a state of emergency", "the trial of the general",
        ),
        "setting": (
            "in the capital", "at the united nations", "after weeks of fighting",
            "near the border", "during the summit", "amid street protests",
            "before the vote", "in the disputed region", "at the embassy",
            "following the coup",
        ),
    },
    "sports": {
        "subject": (
            "the striker", "the goalkeeper", "the head coach", "the home team", "the champion",
            "the midfielder", "the tennis star", "the sprinter", "the captain", "the rookie",
            "the veteran pitcher", "the defending champions", "the cyclist", "fans",
            "the quarterback", "the boxer",
        ),
        "action": (
            "scored", "won", "lost", "clinched", "missed", "defended", "equalled",
            "celebrated", "signed", "broke", "announced", "launched", "secured", "rejected",
        ),
        "object": (
            "a late equaliser", "the title", "the final", "a penalty", "the world record",
            "a hat trick", "the gold medal", "the championship", "a new contract",
            "the league lead", "a knockout punch", "the opening match", "a record",
            "a campaign",
        ),
        "setting": (
            "during the derby", "at the olympics", "in extra time", "at the stadium",
            "in the second half", "before the playoffs", "on the final lap",
            "after the transfer window", "in the tournament", "at wimbledon",
        ),
    },
    "business": {
        "subject": (
            "the central bank", "shareholders", "the chief executive", "the retailer",
            "investors", "the carmaker", "the airline", "analysts", "the bank",
            "the oil company", "wall street", "the startup", "regulators", "the board",
            "the insurer", "exporters",
        ),
        "action": (
            "reported", "raised", "cut", "announced", "approved", "rejected", "acquired",
            "forecast", "lost", "won", "launched", "sold", "posted", "delayed",
        ),
        "object": (
            "quarterly profits", "interest rates", "the merger", "a takeover bid",
            "record revenue", "its stock price", "new jobs", "the dividend", "a bond sale",
            "oil prices", "a record", "the earnings forecast", "a product launch",
            "the trade deficit",
        ),
        "setting": (
            "on wall street", "in early trading", "after the earnings call",
            "amid inflation fears", "at the annual meeting", "in the third quarter",
            "on the stock exchange", "despite weak demand", "in the bond market",
            "before the markets closed",
        ),
    },
    "science": {
        "subject": (
            "researchers", "the space agency", "astronomers", "the software company",
            "engineers", "scientists", "the chip maker", "biologists", "the research team",
            "physicists", "the telescope", "doctors", "hackers", "the robot",
            "climate scientists", "developers",
        ),
        "action": (
            "discovered", "launched", "developed", "released", "tested", "observed",
            "published", "announced", "detected", "patched", "sequenced", "built",
            "broke", "won",
        ),
        "object": (
            "a new exoplanet", "the satellite", "a vaccine", "the operating system update",
            "a faster processor", "the genome", "a security flaw", "a quantum computer",
            "a record", "the rover", "a new species", "the clinical trial",
            "an ai model", "a battery breakthrough",
        ),
        "setting": (
            "in the laboratory", "on mars", "in a new study", "at the conference",
            "in orbit", "in the journal nature", "at the research institute",
            "after years of testing", "in the deep ocean", "on the space station",
        ),
    },
}

_TEMPLATES: tuple[str, ...] = (
    "{subject} {action} {object} {setting} .",
    "{setting} , {subject} {action} {object} .",
    "{subject} {action} {object} .",
    "report : {subject} {action} {object} {setting} .",
    "{subject} said it {action} {object} {setting} .",
)
_SLOTS: tuple[str, ...] = ("subject", "action", "object", "setting")


def generate_topics(num_examples: int, seed: int, *, distractor_rate: float = 0.1) -> list[Example]:
    """Generate the topic-classification task deterministically from ``seed``.

    Example ``i`` is decided by row ``i`` of a ``(num_examples, 10)`` matrix of uniform
    ``[0, 1)`` floats from ``fedtune.rng.generator(seed, "topics")``: column 0 picks the
    topic, column 1 the template, columns 2-5 the word of each slot, columns 6-9 whether
    that slot takes a word from another topic (with probability ``distractor_rate``; the
    other topic is chosen from the slot's word column). Rows are filled one by one, so
    ``generate_topics(n, s)`` is a prefix of ``generate_topics(m, s)`` for ``n <= m``.

    Args:
        num_examples: how many examples, >= 1.
        seed: the data seed.
        distractor_rate: the chance that a slot's word comes from another topic, in [0, 0.5).

    Returns:
        Examples with the sentence as ``prompt``, an empty ``response`` and ``label`` the
        index of the topic in :data:`TOPICS`.

    Raises:
        TypeError, ValueError: on a bad argument.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        raise TypeError(f"`num_examples` must be an int, got {type(num_examples).__name__} {num_examples!r}")
    if num_examples < 1:
        raise ValueError(f"`num_examples` must be >= 1, got {num_examples}")
    if not 0.0 <= distractor_rate < 0.5:
        raise ValueError(f"`distractor_rate` must be in [0, 0.5), got {distractor_rate!r}")

    uniform = rng.generator(seed, "topics").random((num_examples, 2 + 2 * len(_SLOTS)))
    num_topics = len(TOPICS)
    examples = []
    for row in uniform:
        topic = int(row[0] * num_topics)
        template = _TEMPLATES[int(row[1] * len(_TEMPLATES))]
        words = {}
        for j, slot in enumerate(_SLOTS):
            source = topic
            if row[2 + len(_SLOTS) + j] < distractor_rate:
                # Another topic, picked by the fractional part of the word column.
                offset = 1 + int((row[2 + j] * 997) % 1 * (num_topics - 1))
                source = (topic + offset) % num_topics
            choices = _WORDS[TOPICS[source]][slot]
            words[slot] = choices[int(row[2 + j] * len(choices))]
        examples.append(Example(prompt=template.format(**words), response="", label=topic))
    return examples

