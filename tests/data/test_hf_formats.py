"""Local datasets written by the `datasets` library itself, read back by fedtune.data.hf."""

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from fedtune.data import partition_by_field
from fedtune.data.arrays import encode_lm, lm_skip_reason
from fedtune.data.hf import load_examples, read_dataset, write_dolly
from fedtune.data.tasks import TASK_TYPES, Example
from fedtune.data.templates import chat_renderer
from fedtune.data.tokenizer import WordTokenizer

ROWS = {
    "instruction": ["reverse", "copy", "sort", "reverse", "copy", "max"],
    "context": ["a b c", "", "c b a", "d e", "f", "a p"],
    "response": ["c b a", "", "a b c", "e d", "f", "p"],
    "category": ["reverse", "copy", "sort", "reverse", "copy", "max"],
    "stars": [3, 1, 2, 3, 1, 0],
}


def _write(tmp_path, kind, rows=ROWS, name="data"):
    """`rows` written by `datasets` in format `kind`; the path fedtune reads."""
    dataset = Dataset.from_dict(rows)
    if kind == "disk":
        path = tmp_path / name
        dataset.save_to_disk(str(path))
    elif kind == "dict":
        path = tmp_path / name
        DatasetDict({"train": dataset, "test": dataset.select([0, 1])}).save_to_disk(str(path))
    elif kind == "parquet":
        path = tmp_path / f"{name}.parquet"
        dataset.to_parquet(str(path))
    elif kind == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        dataset.to_json(str(path))
    else:
        path = tmp_path / f"{name}.csv"
        dataset.to_csv(str(path), index=False)
    return str(path)


FORMATS = ["disk", "dict", "parquet", "jsonl", "csv"]


@pytest.mark.parametrize("template", ["plain", "dolly"])
def test_every_format_gives_the_same_examples_and_partition(tmp_path, template):
    fields = {"prompt": "instruction", "response": "response", "label": "category"} if template == "plain" else {}
    results = []
    for kind in FORMATS:
        (rows,), names = load_examples(
            [(_write(tmp_path, kind, name=kind), "train")], template=template, fields=fields,
            partition_field="category",
        )
        results.append((rows.examples, rows.values, names, partition_by_field(rows.values, 4, seed=7)))

    first = results[0]
    assert first[2] == ("copy", "max", "reverse", "sort")
    assert [ex.label for ex in first[0]] == [2, 0, 3, 2, 0, 1]
    for other in results[1:]:
        assert other[0] == first[0] and other[1] == first[1] and other[2] == first[2]
        assert all(np.array_equal(a, b) for a, b in zip(other[3], first[3], strict=True))


def test_int_labels_stay_ints_in_every_format(tmp_path):
    loaded = [
        load_examples([(_write(tmp_path, kind, name=kind), "train")],
                      fields={"prompt": "context", "label": "stars"})
        for kind in FORMATS
    ]

    for (rows,), names in loaded:
        assert names == ()
        assert [ex.label for ex in rows.examples] == ROWS["stars"]


def test_datasetdict_split_is_chosen_and_a_missing_one_is_named(tmp_path):
    path = _write(tmp_path, "dict")

    (test,), _ = load_examples([(path, "test")], template="dolly")
    with pytest.raises(ValueError, match=r"`data.split` = 'dev' but .* holds splits \['test', 'train'\]"):
        read_dataset(path, "dev")

    assert len(test.examples) == 2


def test_alpaca_template_with_and_without_input(tmp_path):
    rows = {"instruction": ["Add.", "Greet."], "input": ["2 2", ""], "output": ["4", "hi"]}

    (loaded,), _ = load_examples([(_write(tmp_path, "parquet", rows), "train")], template="alpaca")
    with_input, without = loaded.examples

    assert with_input.prompt.endswith("### Instruction:\nAdd.\n\n### Input:\n2 2\n\n### Response:\n")
    assert "paired with an input" in with_input.prompt
    assert without.prompt.endswith("### Instruction:\nGreet.\n\n### Response:\n")
    assert "### Input" not in without.prompt
    assert (with_input.response, with_input.sep, with_input.text[-1]) == ("4", "", "4")


def test_dolly_template_reads_context_and_category(tmp_path):
    (loaded,), names = load_examples([(_write(tmp_path, "jsonl"), "train")], template="dolly")
    first = loaded.examples[0]

    assert first.prompt.endswith("### Instruction:\nreverse\n\nInput:\na b c\n\n### Response:\n")
    assert "Input:" not in loaded.examples[1].prompt  # empty context: Dolly's no-input prompt
    assert first.response == "c b a" and names[first.label] == "reverse"


def test_plain_template_and_field_mapping(tmp_path):
    rows = {"question": ["2 + 2 ?", "capital of France ?"], "answer": ["4", "Paris"]}

    (loaded,), names = load_examples(
        [(_write(tmp_path, "csv", rows), "train")], fields={"prompt": "question", "response": "answer"}
    )

    assert loaded.examples == [Example("2 + 2 ?", "4", 0), Example("capital of France ?", "Paris", 0)]
    assert names == ()


class _ChatTokenizer(WordTokenizer):
    """A word tokenizer with a Jinja chat template, as a chat model's tokenizer has one."""

    chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }} </s> {% endfor %}"
    bos_token = "<s>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "<s> " + "".join(f"<{m['role']}> {m['content']} </s> " for m in messages)
        return text + ("<assistant> " if add_generation_prompt else "")


def test_chat_template_renders_with_the_tokenizers_own_format(tmp_path):
    tokenizer = _ChatTokenizer(["2", "+", "?", "4", "<user>", "<assistant>", "</s>"])
    rows = {"prompt": ["2 + 2 ?"], "response": ["4"]}

    (loaded,), _ = load_examples([(_write(tmp_path, "jsonl", rows), "train")], template="chat", tokenizer=tokenizer)
    example = loaded.examples[0]
    encoded = encode_lm([example], tokenizer, max_length=16)

    assert example.prompt == " <user> 2 + 2 ? </s> <assistant> "  # the bos string is encode_lm's to add
    assert example.response == "4 </s> "
    supervised = [tokenizer.decode([int(i)]) for i in encoded["labels"][0] if i >= 0]
    assert supervised[:2] == ["4", "</s>"]  # the loss falls on the assistant turn only


def test_chat_template_refused_for_a_tokenizer_without_one():
    with pytest.raises(ValueError, match=r"`data.template` = 'chat' but the tokenizer \(WordTokenizer\) has no chat"):
        chat_renderer(WordTokenizer(["a"]))


def test_missing_mapped_column_and_missing_template_field_are_named(tmp_path):
    path = _write(tmp_path, "parquet")

    with pytest.raises(ValueError, match=r"`data.fields.prompt` = 'question' but .* has no column 'question'"):
        load_examples([(path, "train")], fields={"prompt": "question"})
    with pytest.raises(ValueError, match=r"`data.template` = 'alpaca' needs a 'output' column .* data.fields"):
        load_examples([(path, "train")], template="alpaca")
    with pytest.raises(ValueError, match=r"`data.partition_field` = 'topic' but .* no such column"):
        load_examples([(path, "train")], template="dolly", partition_field="topic")


def test_a_path_that_does_not_exist_is_never_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="local paths only, never a hub id"):
        read_dataset("databricks/databricks-dolly-15k")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="not one written by save_to_disk"):
        read_dataset(tmp_path / "plain")


def test_string_labels_share_one_mapping_across_files(tmp_path):
    train = _write(tmp_path, "parquet", {"prompt": ["a", "b"], "response": ["x", "y"], "label": ["pos", "neg"]})
    held = _write(tmp_path, "csv", {"prompt": ["c"], "response": ["z"], "label": ["mid"]}, name="held")

    (rows, held_rows), names = load_examples([(train, "train"), (held, "train")])

    assert names == ("mid", "neg", "pos")
    assert [ex.label for ex in rows.examples + held_rows.examples] == [2, 1, 0]


def test_partition_by_field_one_client_per_value():
    values = ["b", "a", "c", "a", "b", "a"]

    parts = partition_by_field(values, 3, seed=0)

    assert [p.tolist() for p in parts] == [[1, 3, 5], [0, 4], [2]]  # sorted values a, b, c


def test_partition_by_field_groups_balanced_and_seeded():
    values = [f"task{i}" for i in range(10) for _ in range(i + 1)]  # sizes 1..10, 55 examples

    parts = partition_by_field(values, 4, seed=3, group=True)
    again = partition_by_field(values, 4, seed=3, group=True)
    sizes = sorted(len(p) for p in parts)

    assert sorted(np.concatenate(parts).tolist()) == list(range(55))
    assert all(len({values[i] for i in p}) >= 2 for p in parts)  # values stay whole, grouped
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert sizes[-1] - sizes[0] <= 10  # within the largest value's size: [13, 13, 14, 15] here
    assert sum(sizes) == 55


def test_partition_by_field_refuses_too_many_or_too_few_values():
    with pytest.raises(ValueError, match=r"3 distinct values but federation.num_clients = 2 .* data.group_values"):
        partition_by_field(["a", "b", "c"], 2, seed=0)
    with pytest.raises(ValueError, match=r"2 distinct values .* 3: 1 clients would hold no examples"):
        partition_by_field(["a", "b"], 3, seed=0, group=True)


def test_lm_skip_reason_names_rows_that_cannot_be_encoded():
    tokenizer = WordTokenizer(["a", "b", "c", "d"])

    assert lm_skip_reason(Example("a b", "", 0), tokenizer, max_length=8) == "empty response"
    assert lm_skip_reason(Example("a", "b c d a b c", 0), tokenizer, max_length=8) == "no room for the prompt"
    assert lm_skip_reason(Example("a b c d a b c d", "b", 0), tokenizer, max_length=8) is None  # prompt is cut


def test_write_dolly_is_the_generated_task_in_dollys_columns(tmp_path):
    out = write_dolly(tmp_path / "dolly", num_examples=12, seed=5)
    dataset = read_dataset(out)

    assert dataset.column_names == ["instruction", "context", "response", "category"]
    assert dataset.num_rows == 12
    row = dataset[0]
    assert row["category"] == row["instruction"] in TASK_TYPES
    assert row["response"]
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_dolly(out, 3)
