"""eval.metrics: the scores (Rouge-L, exact match, macro-F1), generation, and what a round reports."""

import logging

import pytest
import torch

from fedtune.config import ConfigError, parse_config
from fedtune.data import Example, WordTokenizer
from fedtune.generate import GenerationSettings, generate_texts, prompt_ids
from fedtune.hf_tokenizer import to_fast_tokenizer
from fedtune.metrics import exact_match, macro_f1, rouge_l
from fedtune.progress import Progress
from fedtune.workload import Workload

CPU = torch.device("cpu")


def _cfg(**eval_keys):
    return parse_config({
        "model": {"config": "micro-llama"},
        "data": {"num_examples": 40, "eval_examples": 24, "max_length": 24},
        "eval": {"batch_size": 8, **eval_keys},
    })


def test_unknown_or_misplaced_metrics_are_one_line_each_naming_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"config": "micro-llama"}, "eval": {"metrics": ["loss", "bleu", "macro_f1"]}})

    unknown, misplaced = err.value.errors
    assert "unknown ['bleu']" in unknown and "rougeL (causal-lm)" in unknown and "macro_f1 (seq-cls)" in unknown
    assert "['macro_f1'] do not apply to model.task = 'causal-lm'" in misplaced
    with pytest.raises(ConfigError, match=r"\['rougeL'\] do not apply to model.task = 'seq-cls'"):
        parse_config({"model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"},
                      "eval": {"metrics": ["accuracy", "rougeL"]}})


def test_the_default_metrics_are_what_runs_reported_before():
    assert _cfg().eval.metrics == ("loss", "accuracy")


def test_rouge_l_is_the_lcs_f_measure_and_exact_match_ignores_whitespace_only():
    # "a b c" vs "a c": LCS 2, precision 2/2, recall 2/3 -> F = 0.8
    assert rouge_l(["a c"], ["a b c"]) == pytest.approx(0.8)
    assert rouge_l(["d a c", "x"], ["d a c", "y"]) == pytest.approx(0.5)  # the mean over examples
    assert exact_match([" d  a c ", "d a", "D a c"], ["d a c", "d a c", "d a c"]) == pytest.approx(1 / 3)


def test_macro_f1_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    predictions, labels = [0, 0, 1, 2, 2, 2, 3], [0, 1, 1, 2, 0, 2, 1]

    expected = sklearn.f1_score(labels, predictions, average="macro", zero_division=0)

    assert macro_f1(predictions, labels) == pytest.approx(expected)


class _Scripted(torch.nn.Module):
    """A "causal LM" whose generate appends a fixed continuation to every row."""

    def __init__(self, continuation):
        super().__init__()
        self.continuation = torch.tensor(continuation)
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.calls.append((input_ids.clone(), attention_mask.clone(), max_new_tokens, kwargs))
        tail = self.continuation[:max_new_tokens].expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail], dim=1)


def test_generation_left_pads_stops_at_eos_and_drops_special_tokens():
    tok = WordTokenizer(["copy", ":", "a", "b", "=>"])  # ids 4..8
    examples = [Example("copy : a =>", "a", 0), Example("copy : a b =>", "a b", 0)]
    model = _Scripted([6, 7, tok.eos_token_id, 6, 6])  # "a b" <eos> then junk

    texts = generate_texts(model, tok, prompt_ids(examples, tok, 24), GenerationSettings(max_new_tokens=5), CPU)

    assert texts == ["a b", "a b"]
    ids, mask, _, kwargs = model.calls[0]
    assert ids.tolist() == [[0, 1, 4, 5, 6, 8], [1, 4, 5, 6, 7, 8]]  # <pad> on the left, <bos> first
    assert mask.tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]
    assert kwargs["eos_token_id"] == tok.eos_token_id and kwargs["do_sample"] is False
    assert exact_match(texts, [ex.response for ex in examples]) == 0.5


def _trained(workload, steps=60):
    """The micro model after a few Adam steps: continuations that depend on the prompt."""
    torch.manual_seed(0)
    model = workload.build_model().train()
    batch = workload.encode(workload.examples[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return model.eval()


def test_batched_greedy_generation_equals_one_prompt_at_a_time_with_either_tokenizer():
    workload = Workload(_cfg())
    model = _trained(workload)
    examples = workload.examples[1][:6]
    settings = GenerationSettings(max_new_tokens=6, batch_size=6)
    word = prompt_ids(examples, workload.tokenizer, 24)
    fast = to_fast_tokenizer(workload.tokenizer, "causal-lm")  # a Hugging Face tokenizer, same ids

    batched = generate_texts(model, workload.tokenizer, word, settings, CPU)
    alone = [generate_texts(model, workload.tokenizer, [row], settings, CPU)[0] for row in word]
    with_hf = generate_texts(model, fast, prompt_ids(examples, fast, 24), settings, CPU)

    assert prompt_ids(examples, fast, 24) == word
    assert batched == alone == with_hf
    assert len(set(batched)) > 1 and all(batched)


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone():
    workload = Workload(_cfg())
    model = workload.build_model()
    prompts = prompt_ids(workload.examples[1][:8], workload.tokenizer, 24)
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, seed=7)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()

    first = generate_texts(model, workload.tokenizer, prompts, settings, CPU)
    again = generate_texts(model, workload.tokenizer, prompts, settings, CPU)
    other = generate_texts(model, workload.tokenizer, prompts, GenerationSettings(max_new_tokens=8, do_sample=True,
                                                                                  seed=8), CPU)

    assert first == again != other
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_round_reports_exactly_the_metrics_asked_for():
    workload = Workload(_cfg(metrics=["loss", "rougeL", "exact_match"], generate_examples=5, max_new_tokens=4))

    scores = workload.evaluate(workload.build_model())

    assert set(scores) == {"eval_loss", "eval_rougeL", "eval_exact_match", "eval_generate_seconds"}
    assert 0 <= scores["eval_rougeL"] <= 1 and 0 <= scores["eval_exact_match"] <= 1
    assert scores["eval_generate_seconds"] > 0


def test_a_classifier_reports_macro_f1_beside_accuracy():
    cfg = parse_config({"model": {"config": "micro-bert", "task": "seq-cls"},
                        "data": {"source": "topics", "num_examples": 40, "eval_examples": 32},
                        "eval": {"metrics": ["accuracy", "macro_f1"]}})
    workload = Workload(cfg)

    scores = workload.evaluate(workload.build_model())

    assert set(scores) == {"eval_accuracy", "eval_macro_f1"}
    assert 0 <= scores["eval_macro_f1"] <= scores["eval_accuracy"] <= 1  # here: few classes predicted


def test_a_long_phase_logs_its_progress_and_a_short_one_does_not(caplog, monkeypatch):
    clock = iter(range(0, 100, 4))  # every call to the clock is 4 s later
    monkeypatch.setattr("fedtune.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="fedtune.progress"):
        slow = Progress("evaluating", 1000, "examples", every_s=10)
        for _ in range(4):
            slow.advance(250)  # at 4, 8, 12 (logs), 16 s (done: no line)
        Progress("generating", 10, "prompts", every_s=0).advance(5)

    assert slow.lines == 1
    assert [r.getMessage() for r in caplog.records] == ["evaluating: 750/1000 examples (12 s)"]


def test_rouge_l_stems_as_super_natural_instructions_does_and_leaves_the_root_logger_alone():
    root_handlers = list(logging.root.handlers)

    assert rouge_l(["the dogs running"], ["the dog runs"]) == pytest.approx(1.0)  # Porter-stemmed tokens

    assert logging.root.handlers == root_handlers  # else Flower's debug lines would print in every run
