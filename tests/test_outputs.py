"""A run's model/ loads with transformers, tokenizers and peft alone, and computes what fedtune computed."""

import json

import pytest
import torch

from fedtune.config import load_config, parse_config
from fedtune.data.batches import encode_classification
from fedtune.generate import prompt_ids
from fedtune.runs import TENSORBOARD_DIR
from fedtune.workload import BASE_DIR, Workload, evaluate
from tests.conftest import SMALL_LORA_CONFIG, run_cli

SMALL = {"data": {"num_examples": 40, "eval_examples": 16}}
KINDS = {
    "zo-causal-lm": {"model": {"config": "micro-llama"}},
    "zo-seq-cls": {"model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"}},
    "zo-causal-lm-lora-params": {"model": {"config": "micro-llama"}, "algorithm": {"name": "mezo", "params": "lora"}},
    "lora-seq-cls": {"model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"},
                     "algorithm": {"name": "fedit"}},
}


def _config(kind):
    table = {**SMALL, **KINDS[kind]}
    table["data"] = {**SMALL["data"], **KINDS[kind].get("data", {})}
    return parse_config(table)


def _load_standard(directory, task):
    """The saved model, as a user without fedtune loads it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    if (directory / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(auto.from_pretrained(directory / BASE_DIR), directory)
    else:
        model = auto.from_pretrained(directory)
    return model.eval(), AutoTokenizer.from_pretrained(directory)


def _trained_tensors(workload, model):
    if workload.cfg.algorithm.name == "fedit":  # federated LoRA trains the adapter (and the head)
        from fedtune.lora.adapters import adapter_parameters

        return list(adapter_parameters(model).values())
    return [t for _, t in workload.trainable(model)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_saved_model_loads_with_the_standard_tools_and_gives_the_same_logits(tmp_path, kind):
    workload = Workload(_config(kind))
    model = workload.build_model()
    if workload.cfg.algorithm.name == "fedit":
        from fedtune.lora.adapters import inject_lora

        model = inject_lora(model, workload.cfg.lora, workload.cfg.model.task, workload.cfg.seed)
    with torch.no_grad():  # as training would: only what the run trains moves
        for i, tensor in enumerate(_trained_tensors(workload, model)):
            tensor.add_(torch.randn(tensor.shape, generator=torch.Generator().manual_seed(i)) * 0.05)

    workload.save(model, tmp_path / "model")
    loaded, tokenizer = _load_standard(tmp_path / "model", workload.cfg.model.task)

    batch = workload.eval_set
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert not (tmp_path / "model" / "vocab.json").exists()
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    example = workload.examples[1][0]
    assert tokenizer(example.prompt, add_special_tokens=False).input_ids == workload.tokenizer.encode(example.prompt)


def test_the_word_tokenizer_saved_for_a_causal_lm_encodes_prompts_as_generation_does(tmp_path):
    workload = Workload(_config("zo-causal-lm"))
    workload.save(workload.build_model(), tmp_path)
    _, tokenizer = _load_standard(tmp_path, "causal-lm")
    examples = workload.examples[1]

    assert [tokenizer(ex.prompt).input_ids for ex in examples] == prompt_ids(examples, workload.tokenizer, 10**6)
    ids = tokenizer(examples[0].response).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == workload.tokenizer.decode(ids, skip_special_tokens=True)
    assert tokenizer.padding_side == "left"  # ready for batched generation


def test_the_word_tokenizer_saved_for_a_classifier_encodes_rows_as_training_does(tmp_path):
    workload = Workload(_config("zo-seq-cls"))
    workload.save(workload.build_model(), tmp_path)
    _, tokenizer = _load_standard(tmp_path, "seq-cls")
    examples = workload.examples[1]
    texts = [f"{ex.prompt} {ex.response}" if ex.response else ex.prompt for ex in examples]

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=workload.cfg.data.max_length,
                        return_tensors="pt")

    ours = encode_classification(examples, workload.tokenizer, max_length=workload.cfg.data.max_length)
    assert torch.equal(encoded["attention_mask"], ours["attention_mask"])
    assert torch.equal(encoded["input_ids"][encoded["attention_mask"] == 1],
                       ours["input_ids"][ours["attention_mask"] == 1])


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_reproduces_the_last_evaluation(run_dir):
    """The model loaded without fedtune scores on the held-out set what the run reported last."""
    cfg = load_config(run_dir / "config.toml")
    workload = Workload(cfg)
    loaded, _ = _load_standard(run_dir / "model", cfg.model.task)

    scores = evaluate(loaded, workload.eval_set, 64, torch.device("cpu"))

    last = _records(run_dir)[-1]
    assert scores["eval_loss"] == pytest.approx(last["eval_loss"], rel=1e-5)
    assert scores["eval_accuracy"] == pytest.approx(last["eval_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_zo_causal_lm_run_reports_rouge_writes_tensorboard_and_saves_a_loadable_model(small_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = small_config(name="gen", rounds=2, num_clients=3, per_round=2)

    result = run_cli("run", path, "--set", "log.tensorboard=true", "--set", "eval.generate_examples=16",
                     "--set", 'eval.metrics=["loss", "accuracy", "rougeL", "exact_match"]', timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "gen"
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records:
        assert 0 <= record["eval_rougeL"] <= 1 and 0 <= record["eval_exact_match"] <= 1
        assert 0 < record["eval_generate_seconds"] <= record.get("eval_s", record["eval_generate_seconds"])
    assert "round 2/2: train loss" in result.stdout and "rougeL" in result.stdout and "EM" in result.stdout
    assert "DEBUG" not in result.stdout
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("eval_loss", "eval_rougeL", "train_loss", "bytes_up_per_client", "eval_generate_seconds"):
        expected = [(r["round"], r[tag]) for r in records if r.get(tag) is not None]
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(s, pytest.approx(v)) for s, v in expected], tag
    _assert_reproduces_the_last_evaluation(run_dir)


@pytest.mark.slow
def test_a_zo_classifier_run_reports_macro_f1_and_saves_a_loadable_model(small_config, tmp_path):
    path = small_config(name="cls", rounds=2, num_clients=3, per_round=2)
    path.write_text(path.read_text().replace('config = "micro-llama"', 'config = "micro-bert"\ntask = "seq-cls"')
                    .replace("num_examples = 400", 'source = "topics"\nnum_examples = 240'))

    result = run_cli("run", path, "--set", 'eval.metrics=["loss", "accuracy", "macro_f1"]', timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "cls"
    assert all(0 <= r["eval_macro_f1"] <= 1 for r in _records(run_dir))
    assert "macro-F1" in result.stdout
    _assert_reproduces_the_last_evaluation(run_dir)


@pytest.mark.slow
def test_a_federated_lora_run_saves_an_adapter_that_peft_loads_onto_the_saved_base(tmp_path):
    path = tmp_path / "lora.toml"
    path.write_text(SMALL_LORA_CONFIG.format(name="lora", output_dir=tmp_path / "runs", num_clients=4, rule="fedit",
                                             two_phase="false", method="none"))

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "lora"
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert (run_dir / "model" / BASE_DIR / "model.safetensors").is_file()
    _assert_reproduces_the_last_evaluation(run_dir)
