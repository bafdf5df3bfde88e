"""The generated good/bad-news task: deterministic, balanced, and its label a function of the text."""

import collections

import pytest

from fedtune.data import NEWS_CLASSES, NEWS_LABEL_NAMES, Example, generate_news, news

_CONNECTIVES = ("while ", "even as ", "although ", "whereas ")


def _reference_label(prompt: str) -> int:
    """The label read off the sentence the way a person would, independently of the generator.

    Take the clause after the connective's clause, find its quantity (the domain) and what
    happened to it (the outcome).
    """
    assert prompt.endswith(" .")
    side, main = prompt[: -len(" .")].split(" , ")
    assert side.startswith(_CONNECTIVES) and not main.startswith(_CONNECTIVES)
    padded = f" {main} "
    found = [
        (domain, outcome)
        for domain, words in news._WORDS.items()
        for quantity in words["quantity"]
        for outcome, changes in enumerate(news._CHANGES)
        for change in changes
        if f" {quantity} {change} " in padded
    ]
    assert len(found) == 1, (prompt, found)
    domain, outcome = found[0]
    return NEWS_CLASSES.index(f"{domain}-{('good', 'bad')[outcome]}")


def test_same_seed_same_examples_and_prefix_property():
    assert generate_news(50, 7) == generate_news(50, 7)
    assert generate_news(20, 7) == generate_news(50, 7)[:20]
    assert generate_news(1, 7) == generate_news(50, 7)[:1]
    assert generate_news(50, 7) != generate_news(50, 8)


def test_ten_named_classes_roughly_balanced_and_all_present():
    examples = generate_news(5000, 0)

    assert len(NEWS_CLASSES) == len(NEWS_LABEL_NAMES) == 10
    assert len(set(NEWS_CLASSES)) == len(set(NEWS_LABEL_NAMES)) == 10
    assert all(isinstance(ex, Example) and ex.response == "" for ex in examples)
    counts = collections.Counter(ex.label for ex in examples)
    assert sorted(counts) == list(range(10))
    # 5000 uniform draws over 10 classes: each count is 500 ± 3 sd (sd = 21).
    assert all(430 <= c <= 570 for c in counts.values())
    assert len({ex.prompt for ex in examples}) > 4950  # few repeats: no train/eval leakage


def test_label_is_a_function_of_the_text():
    examples = generate_news(20000, 3)

    labels_of: dict[str, set[int]] = collections.defaultdict(set)
    for ex in examples:
        labels_of[ex.prompt].add(ex.label)
    assert all(len(labels) == 1 for labels in labels_of.values())
    # Stronger: an independent reader of the sentence recovers every label.
    assert all(_reference_label(ex.prompt) == ex.label for ex in examples)


def test_every_sentence_holds_one_good_and_one_bad_report():
    examples = generate_news(4000, 2)

    for ex in examples:
        # Exactly one outcome phrase of each kind: the words of outcome never give the label.
        padded = f" {ex.prompt} "
        counts = [sum(f" {change} " in padded for change in changes) for changes in news._CHANGES]
        assert counts == [1, 1], ex.prompt
    # The side clause is about the label's domain half the time.
    same_domain = 0
    for ex in examples:
        domain = NEWS_CLASSES[ex.label].split("-")[0]
        same_domain += sum(f" {ex.prompt} ".count(f" {q} ") for q in news._WORDS[domain]["quantity"]) == 2
    # Two quantities of the label's domain: the side clause is the sibling class (1/2).
    assert 0.45 < same_domain / len(examples) < 0.55


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`num_examples` must be >= 1, got 0"):
        generate_news(0, 1)
    with pytest.raises(TypeError, match="`num_examples` must be an int"):
        generate_news(2.0, 1)
    with pytest.raises(TypeError, match="`num_examples` must be an int"):
        generate_news(True, 1)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        generate_news(5, "1")
    with pytest.raises(ValueError, match="`seed` must be in"):
        generate_news(5, -1)
