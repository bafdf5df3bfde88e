"""Heterogeneous-rank LoRA: the per-slice means by hand, truncation, and a small simulation."""

import pytest
import torch

from fedtune.lora.hetlora import HetLora, rank_of_update, truncate, zero_beyond

A, B, HEAD = "m.lora_A.weight", "m.lora_B.weight", "classifier.weight"


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_slices_a_client_did_not_train_count_as_left_at_their_global_value():
    current = {A: torch.full((2, 2), 9.0), B: torch.full((2, 2), 9.0), HEAD: torch.zeros(1, 2)}
    small = {A: _t([[1, 1]]), B: _t([[1], [1]]), HEAD: _t([[4, 0]])}  # rank 1, weight 1
    large = {A: _t([[2, 2], [4, 4]]), B: _t([[2, 4], [2, 4]]), HEAD: _t([[0, 8]])}  # rank 2, weight 3

    out = HetLora(None).aggregate([(1.0, small), (3.0, large)], current).state

    # slice 0: (1*1 + 3*2) / 4; slice 1: (1*9 (the global's, untrained by the rank-1 client) + 3*4) / 4
    assert out[A].tolist() == [[1.75, 1.75], [5.25, 5.25]]
    assert out[B].tolist() == [[1.75, 5.25], [1.75, 5.25]]
    assert out[HEAD].tolist() == [[1.0, 6.0]]  # everyone: (1*[4,0] + 3*[0,8]) / 4


def test_a_slice_nobody_trained_keeps_its_global_value():
    current = {A: _t([[0, 0], [5, 6]]), B: _t([[0, 7], [0, 8]])}
    updates = [(1.0, {A: _t([[1, 2]]), B: _t([[3], [4]])}), (1.0, {A: _t([[3, 4]]), B: _t([[5], [6]])})]

    out = HetLora(None).aggregate(updates, current)

    assert out.state[A].tolist() == [[2.0, 3.0], [5.0, 6.0]]
    assert out.state[B].tolist() == [[4.0, 7.0], [5.0, 8.0]]
    assert out.bias_before == out.bias_after >= 0


def test_truncate_and_zero_beyond_keep_the_first_slices():
    state = {A: torch.arange(6.0).reshape(3, 2), B: torch.arange(6.0).reshape(2, 3), HEAD: torch.ones(2)}

    small = truncate(state, 2)
    assert small[A].shape == (2, 2) and small[B].shape == (2, 2) and small[HEAD] is state[HEAD]
    assert rank_of_update(small) == 2
    zero_beyond(state, 1)
    assert state[A][1:].abs().sum() == 0 and state[B][:, 1:].abs().sum() == 0
    assert state[A][0].tolist() == [0.0, 1.0] and state[B][:, 0].tolist() == [0.0, 3.0]


def test_an_update_above_the_global_rank_is_refused():
    current = {A: torch.zeros(1, 2), B: torch.zeros(2, 1)}
    with pytest.raises(ValueError, match="rank 2 is above the global adapter's 1"):
        HetLora(None).aggregate([(1.0, {A: torch.zeros(2, 2), B: torch.zeros(2, 2)})], current)


def test_ranks_come_from_the_config_and_are_checked():
    from fedtune.algorithms.hetlora import client_rank
    from fedtune.config import ConfigError
    from tests.lora.conftest import micro_config

    cfg = micro_config("algorithm.name=hetlora", "hetlora.ranks=[1, 2, 4]")
    assert [client_rank(cfg, p) for p in range(4)] == [1, 2, 4, 1]
    assert client_rank(micro_config("algorithm.name=hetlora"), 3) == 4  # empty: lora.rank
    with pytest.raises(ConfigError, match=r"`hetlora.ranks` must each be in \[1, lora.rank=4\]"):
        micro_config("algorithm.name=hetlora", "hetlora.ranks=[2, 8]")
    with pytest.raises(ConfigError, match="`hetlora.ranks` must be a list of integers"):
        micro_config("algorithm.name=hetlora", 'hetlora.ranks=["2"]')


@pytest.mark.slow
def test_clients_of_smaller_ranks_send_less_and_the_slices_they_skip_come_from_the_others(task_identity):
    from tests.lora.conftest import distance, micro_config, run_rounds

    _, fedit, dense = run_rounds(micro_config("algorithm.name=fedit"), 2)
    _, same, _ = run_rounds(micro_config("algorithm.name=hetlora"), 2)  # every client at lora.rank = 4
    start, small, records = run_rounds(micro_config("algorithm.name=hetlora", "hetlora.ranks=[1]"), 2)
    _, _, mixed = run_rounds(micro_config("algorithm.name=hetlora", "hetlora.ranks=[1, 4]"), 2)

    assert all(torch.equal(same.state[n], fedit.state[n]) for n in fedit.state)  # all at full rank: FedIT
    # rank 1 of 4: a quarter of the factors go up (the head is sent whole); a mix lies between
    assert records[-1]["bytes_up_per_client"] < mixed[-1]["bytes_up_per_client"] < dense[-1]["bytes_up_per_client"]
    for name in (n for n in small.state if n.endswith("lora_A.weight")):
        assert torch.equal(small.state[name][1:], start[name][1:])  # nobody trained slices 1..3
        assert not torch.equal(small.state[name][0], start[name][0])
    assert distance(small.state, start) > 0
    assert 0 <= records[-1]["bias_before"] and records[-1]["bias_after"] == records[-1]["bias_before"]


def test_a_client_prunes_the_slices_that_carry_little_of_its_adapter():
    from fedtune.algorithms.hetlora import pruned_rank

    # B = I and A = diag(s): B A = diag(s), so slice j carries s_j; kept [3, 4] has norm 5
    state = {A: torch.diag(_t([3, 4, 0.3, 0.4])), B: torch.eye(4)}

    # gamma 0.5: keep 2 of 4; the dropped slices' norm is sqrt(0.3^2 + 0.4^2) = 0.5 = 0.1 x 5
    assert pruned_rank(state, 4, gamma=0.5, threshold=0.11, min_rank=1) == 2
    assert pruned_rank(state, 4, gamma=0.5, threshold=0.09, min_rank=1) == 4
    assert pruned_rank(state, 4, gamma=0.5, threshold=0.09, min_rank=3) == 3  # 0.4 <= 0.09 x sqrt(25.09)
    assert pruned_rank(state, 4, gamma=0.9, threshold=1e9, min_rank=1) == 3  # floor(3.6): one slice at least
    assert pruned_rank(truncate(state, 1), 1, gamma=0.5, threshold=1e9, min_rank=1) == 1  # nothing left to prune


def test_the_pruning_norm_is_the_norm_of_the_product():
    from fedtune.algorithms.hetlora import _product_norm2
    from fedtune.rng import generator

    rng = generator(0, "test")
    a, b = torch.from_numpy(rng.standard_normal((3, 7))), torch.from_numpy(rng.standard_normal((5, 3)))

    # a different order of the same float64 sums: equal to within its rounding
    assert _product_norm2(a, b) == pytest.approx(float(torch.linalg.matrix_norm(b.double() @ a.double()) ** 2),
                                                 rel=1e-12)


def test_pruning_settings_are_checked_one_line_each():
    from fedtune.config import ConfigError
    from tests.lora.conftest import micro_config

    with pytest.raises(ConfigError) as info:
        micro_config("algorithm.name=hetlora", "hetlora.prune=true", "hetlora.prune_gamma=1.0",
                     "hetlora.prune_threshold=-0.5", "hetlora.min_rank=5")
    lines = str(info.value).splitlines()
    assert any("`hetlora.prune_gamma` must be in (0, 1)" in line and "got 1.0" in line for line in lines)
    assert any("`hetlora.prune_threshold` must be a finite number >= 0, got -0.5" in line for line in lines)
    assert any("`hetlora.min_rank` must be in [1, lora.rank=4], got 5" in line for line in lines)
    micro_config("algorithm.name=fedit", "hetlora.prune_gamma=1.0")  # only the running algorithm's checks


@pytest.mark.slow
def test_a_pruning_client_keeps_its_smaller_rank_in_later_rounds_on_any_node(task_identity, tmp_path):
    from flwr.app import MessageType

    from fedtune import wire
    from fedtune.server.lora_strategy import FederatedLora
    from tests.lora.conftest import InProcessGrid, micro_config

    # a threshold no adapter reaches: every client halves its rank each time it trains, down to 1;
    # error feedback carries the residual of the slices a client keeps
    cfg = micro_config("algorithm.name=hetlora", "hetlora.prune=true", "hetlora.prune_gamma=0.5",
                       "hetlora.prune_threshold=1e9", "federation.num_clients=6", "federation.clients_per_round=3",
                       "compress.method=topk", "compress.topk=0.5")
    strategy = FederatedLora(cfg)
    strategy.assign_partitions = True  # a pool of 3 nodes plays the 6 clients: no state stays on a node
    start = {n: t.clone() for n, t in strategy.state.items()}
    grid = InProcessGrid(cfg, num_nodes=cfg.federation.simulated_nodes, run_dir=tmp_path)
    records = []

    strategy.start_rounds(grid, 3, records.append, connect_timeout=1)

    sent: dict[int, list[int]] = {}  # partition -> the ranks it was sent, round by round
    for m in grid.sent:
        if m.metadata.message_type == MessageType.TRAIN:
            config = m.content[wire.CONFIG]
            sent.setdefault(int(config[wire.PARTITION]), []).append(int(config[wire.RANK]))
    assert sum(map(len, sent.values())) == 9
    for partition, ranks in sent.items():
        assert ranks == [max(1, 4 >> k) for k in range(len(ranks))]  # 4, 2, 1, ...
        assert strategy.ranks[partition] == max(1, 4 >> len(ranks))
    assert all(r["replies"] == 3 and r["rejected"] == 0 and r["failed"] == 0 for r in records[1:])
    assert all(t.shape == start[n].shape and torch.isfinite(t).all() for n, t in strategy.state.items())
    assert all(r["bias_after"] == r["bias_before"] >= 0 for r in records[1:])
    name = next(n for n in strategy.state if n.endswith("lora_A.weight"))
    assert torch.equal(strategy.state[name][2:], start[name][2:])  # slices 2, 3: pruned by everyone in round 1
    assert not torch.equal(strategy.state[name][:2], start[name][:2])


@pytest.mark.slow
def test_pruning_that_never_triggers_changes_nothing(task_identity):
    from tests.lora.conftest import micro_config, run_rounds

    _, off, _ = run_rounds(micro_config("algorithm.name=hetlora", "hetlora.ranks=[1, 2, 4]"), 2)
    # threshold 0: only slices that carry nothing would go, and every trained slice carries something
    _, on, _ = run_rounds(micro_config("algorithm.name=hetlora", "hetlora.ranks=[1, 2, 4]",
                                        "hetlora.prune=true", "hetlora.prune_threshold=0"), 2)

    assert all(torch.equal(on.state[n], off.state[n]) for n in off.state)
    assert on.ranks == {}


@pytest.mark.slow
def test_a_reply_claiming_more_than_the_rank_it_was_sent_is_rejected(task_identity):
    from fedtune import wire
    from fedtune.client.lora import train_lora
    from fedtune.server.lora_strategy import FederatedLora
    from tests.lora.conftest import InProcessGrid, micro_config

    cfg = micro_config("algorithm.name=hetlora", "hetlora.ranks=[2]", "hetlora.prune=true",
                       "hetlora.prune_threshold=1e9", "federation.clients_per_round=4")
    strategy = FederatedLora(cfg)

    def overclaim(msg, context):
        reply = train_lora(cfg, msg, context)
        reply.content[wire.METRICS][wire.RANK] = 3  # sent rank 2, pruned to 1
        return reply

    grid = InProcessGrid(cfg)
    grid.handlers = {node: overclaim for node in grid.node_ids[:1]}
    records = []

    strategy.start_rounds(grid, 1, records.append, connect_timeout=1)

    assert records[-1]["rejected"] == 1 and records[-1]["replies"] == 3
    assert strategy.ranks == {1: 1, 2: 1, 3: 1}  # the overclaiming client (partition 0) keeps its rank 2
