"""Heads that start from the label names: zero-shot at step 0, PEFT-compatible, saved with the model."""

import json

import pytest
import torch

from fedtune.config import parse_config
from fedtune.models import HEAD_FILE, LabelNameClassifier, VerbalizerClassifier
from fedtune.workload import Workload, evaluate, label_names

SEQ_CLS = {
    "seed": 5,
    "model": {"config": "micro-bert", "task": "seq-cls", "head": "label-names"},
    "data": {"source": "topics", "num_examples": 64, "eval_examples": 48, "max_length": 24},
    "federation": {"num_clients": 4, "clients_per_round": 2},
    "algorithm": {"name": "fedkseed", "local_steps": 2, "batch_size": 8},
}


def _config(*overrides):
    return parse_config(SEQ_CLS, list(overrides))


def _zero_shot(model: LabelNameClassifier, encoded) -> torch.Tensor:
    """Argmax over classes of the cosine between each sentence's and each label name's embedding."""
    with torch.inference_mode():
        mask = encoded["attention_mask"]
        states = model.encoder(input_ids=encoded["input_ids"], attention_mask=mask).last_hidden_state
        sentences = torch.nn.functional.normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
        names = torch.nn.functional.normalize(model.classifier.weight, dim=-1)
        return (sentences @ names.T).argmax(-1)


def test_label_name_head_starts_as_the_zero_shot_cosine_classifier():
    workload = Workload(_config())

    model = workload.build_model()

    assert isinstance(model, LabelNameClassifier)
    assert model.label_names == ["world politics news", "sports news", "business and economy news",
                                 "science and technology news"]
    norms = model.classifier.weight.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, 20.0), rtol=1e-3)  # head_scale; float16-rounded rows
    assert torch.count_nonzero(model.classifier.bias) == 0
    encoded = workload.eval_set
    with torch.inference_mode():
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    assert torch.equal(logits.argmax(-1), _zero_shot(model, encoded))


def test_every_party_builds_the_same_head_bits():
    first, second = Workload(_config()).build_model(), Workload(_config()).build_model()

    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert torch.equal(first.classifier.weight, first.classifier.weight.half().float())  # rounded at init


def test_label_name_head_trains_under_peft_lora_and_keeps_the_head_trainable():
    workload = Workload(_config('algorithm.params="lora"', "lora.rank=2"))

    model = workload.build_model()
    named = dict(workload.trainable(model))

    assert any("lora_A" in n for n in named) and any("lora_B" in n for n in named)
    assert "base_model.model.classifier.weight" in named
    encoded = workload.eval_set
    loss = model(input_ids=encoded["input_ids"][:4], attention_mask=encoded["attention_mask"][:4],
                 labels=encoded["labels"][:4]).loss
    assert torch.isfinite(loss)


def test_saved_label_name_model_holds_the_encoder_the_head_and_the_names(tmp_path):
    from safetensors.torch import load_file

    model = Workload(_config()).build_model()

    model.save_pretrained(tmp_path)

    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert torch.equal(load_file(tmp_path / "classifier.safetensors")["weight"], model.classifier.weight)
    assert json.loads((tmp_path / HEAD_FILE).read_text())["label_names"] == model.label_names


def test_verbalizer_scores_the_label_words_at_the_last_real_token():
    cfg = _config('model.config="micro-opt"', 'data.label_names=["world", "sports", "business", "science"]')
    workload = Workload(cfg)

    model = workload.build_model()

    assert isinstance(model, VerbalizerClassifier)
    encoded = workload.eval_set
    ids, mask = encoded["input_ids"][:3], encoded["attention_mask"][:3]
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
        full = model.lm(input_ids=ids, attention_mask=mask).logits
    last = mask.sum(1) - 1  # the word tokenizer pads on the right
    words = [workload.tokenizer.encode(w)[0] for w in ("world", "sports", "business", "science")]
    expected = full[torch.arange(3), last][:, words]
    assert torch.equal(logits, expected)


def test_verbalizer_refuses_label_names_sharing_a_first_token():
    cfg = _config('model.config="micro-opt"', 'data.label_names=["sports a", "sports b", "business", "science"]')

    with pytest.raises(ValueError, match="distinct tokens"):
        Workload(cfg).build_model()


def test_label_names_must_match_the_number_of_classes():
    cfg = _config('data.label_names=["a", "b", "c"]')

    with pytest.raises(ValueError, match="3 names but the data has 4 classes"):
        label_names(cfg, 4)


def test_zero_shot_accuracy_is_evaluated_by_the_common_evaluator():
    workload = Workload(_config())
    model = workload.build_model()

    result = evaluate(model, workload.eval_set, 16, workload.device)

    expected = float((_zero_shot(model, workload.eval_set) == workload.eval_set["labels"]).float().mean())
    assert result["eval_accuracy"] == pytest.approx(expected)


def test_a_saved_label_name_model_loads_back_with_its_trained_head(tmp_path):
    workload = Workload(_config())
    model = workload.build_model()
    with torch.no_grad():  # as a run leaves it: the head moved away from its label-name start
        model.classifier.weight.add_(torch.randn(model.classifier.weight.shape, generator=torch.Generator().manual_seed(1)))
        model.classifier.bias.add_(0.5)
    workload.save(model, tmp_path / "model")  # what a run writes under runs/<name>/model

    loaded = LabelNameClassifier.from_pretrained(tmp_path / "model")

    assert loaded.label_names == model.label_names
    encoded = workload.eval_set
    with torch.inference_mode():
        want = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        got = loaded(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    assert torch.equal(got, want)
    with pytest.raises(FileNotFoundError, match="not a model fedtune saved with a label-name head"):
        LabelNameClassifier.from_pretrained(tmp_path)


def test_a_saved_verbalizer_model_loads_back_with_transformers_alone(tmp_path):
    cfg = _config('model.config="micro-opt"', 'data.label_names=["world", "sports", "business", "science"]')
    workload = Workload(cfg)
    model = workload.build_model()
    workload.save(model, tmp_path / "model")

    loaded = VerbalizerClassifier.from_pretrained(tmp_path / "model")

    encoded = workload.eval_set
    with torch.inference_mode():
        want = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        got = loaded(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    assert loaded.label_names == model.label_names and torch.equal(got, want)
