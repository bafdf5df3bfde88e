"""The generated good/bad-news task: deterministic, balanced, and its label a function of the text."""

import collections

import pytest

from fedtune.data import NEWS_CLASSES, NEWS_LABEL_NAMES, Example, generate_news
from fedtune.data import news


def _reference_label(prompt: str) -> int:
    """The label read off the sentence the way a person would, independently of the generator.

    Take the clause not introduced by "while" / "even as", find its quantity and its verb of
    change, and combine: good news when a good quantity went up or a bad one went down.
    """
    assert prompt.endswith(" .")
    body = prompt[: -len(" .")]
    if body.startswith(("while ", "even as ")):
        _, main = body.split(" , ", 1)
    else:
        main = body.split(" , ", 1)[0]
    assert " , " not in main and not main.startswith(("while ", "even as "))
    padded = f" {main} "
    found = [
        (domain, valence, direction)
        for domain, words in news._WORDS.items()
        for valence in ("good", "bad")
        for quantity in words[valence]
        for direction, verbs in enumerate(news._DIRECTIONS)
        for verb in verbs
        if f" {quantity} {verb} " in padded
    ]
    assert len(found) == 1, (prompt, found)
    domain, valence, direction = found[0]
    good = (valence == "good") == (direction == 0)
    return NEWS_CLASSES.index(f"{domain}-{'good' if good else 'bad'}")


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


def test_no_single_word_gives_the_outcome_and_a_sibling_is_usually_present():
    examples = generate_news(8000, 2)

    # "losses" and "profits" each come with good and bad news about equally often: the
    # outcome is quantity x direction, not either word.
    for word in ("losses", "profits", " fell ", " rose "):
        outcomes = [ex.label % 2 for ex in examples if word in ex.prompt]
        assert 0.4 < sum(outcomes) / len(outcomes) < 0.6, word
    # Four templates in five carry a side clause of another class.
    two_clauses = sum(" , " in ex.prompt for ex in examples) / len(examples)
    assert 0.77 < two_clauses < 0.83


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
