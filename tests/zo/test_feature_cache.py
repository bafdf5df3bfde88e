"""ZO steps on a label-name head run on the frozen encoder's features, computed once.

The cached path must be the same loss function as the whole forward (equal up to the last
bits of batch-size-dependent kernels), take the same keys, and run the encoder once per
client's data instead of twice a step.
"""

import numpy as np
import pytest
import torch

from fedtune.config import parse_config
from fedtune.zo.client import ZOClient, frozen_head

HEAD_ONLY = {
    "seed": 3,
    "model": {"config": "micro-bert", "task": "seq-cls", "head": "label-names", "trainable": ["classifier.*"]},
    "data": {"source": "topics", "num_examples": 96, "eval_examples": 16, "max_length": 24},
    "federation": {"num_clients": 2, "clients_per_round": 2},
    "algorithm": {"name": "fedkseed", "local_steps": 6, "batch_size": 8, "num_candidates": 32, "lr": 0.05,
                  "eps": 1e-2},
}


def _client(*overrides: str) -> ZOClient:
    client = ZOClient(parse_config(HEAD_ONLY, list(overrides)))
    client.sync(0, [])
    return client


def _count_encoder_calls(client: ZOClient) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    client.model.encoder.register_forward_hook(hook)
    return calls


def test_the_cached_loss_is_the_whole_forward_loss():
    cached, full = _client(), _client("algorithm.cache_features=false")
    assert cached.head is not None and full.head is None
    encoded_cached, encoded_full = cached._data(0, 2), full._data(0, 2)

    for step in range(5):
        with torch.no_grad():
            a = float(cached._batch_loss(encoded_cached, 8, 11, step))
            b = float(full._batch_loss(encoded_full, 8, 11, step))
        assert a == pytest.approx(b, rel=1e-5)


def test_cached_steps_take_the_same_keys_and_scalars_as_the_whole_forward():
    cached, full = _client(), _client("algorithm.cache_features=false")

    a, b = cached.train(1, 0, 2), full.train(1, 0, 2)

    assert np.array_equal(a.keys, b.keys)
    assert np.all(np.sign(a.scalars) == np.sign(b.scalars))
    np.testing.assert_allclose(a.scalars, b.scalars, rtol=1e-3, atol=1e-3)  # (L+ - L-) / 2 eps of near-equal losses
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)


def test_the_encoder_runs_once_per_client_data_with_the_cache():
    cached, full = _client(), _client("algorithm.cache_features=false")
    calls_cached, calls_full = _count_encoder_calls(cached), _count_encoder_calls(full)
    cached._data(0, 2)  # built (and its features computed) before counting: not a step
    calls_cached[0] = 0

    cached.train(1, 0, 2)
    cached.sync(0, [])
    cached.train(2, 0, 2)  # the same client's data again: nothing recomputed
    full.train(1, 0, 2)

    assert calls_cached[0] == 0
    assert calls_full[0] == 2 * HEAD_ONLY["algorithm"]["local_steps"]


def test_the_features_are_computed_once_when_the_data_is_built():
    client = _client()
    calls = _count_encoder_calls(client)

    encoded = client._data(1, 2)
    client._data(1, 2)

    assert calls[0] == -(-encoded["input_ids"].shape[0] // client.cfg.eval.batch_size)
    assert encoded["features"].shape == (encoded["input_ids"].shape[0], client.model.config.hidden_size)


@pytest.mark.parametrize("trainable", [["classifier.*", "encoder.embeddings.LayerNorm.*"], ["encoder.*"]])
def test_no_cache_when_an_encoder_weight_is_trained(trainable):
    client = ZOClient(parse_config(HEAD_ONLY, [f"model.trainable={trainable!r}".replace("'", '"')]))
    assert client.head is None
    assert any(not name.startswith("classifier.") for name, _ in client.params)


def test_no_cache_for_a_model_without_a_label_name_head():
    model = torch.nn.Linear(2, 2)
    assert frozen_head(model, ["weight"]) is None
