"""The on-device ClientApp: ONNX Runtime + numpy + flwr, no torch.

It speaks fedtune/app/client_app.py's protocol message for message (the same :mod:`fedtune.wire` keys
and encoders, ``need-state`` when the seed log it was sent does not reach the round's state,
the digest of its synced weights), so the server cannot tell a device from a torch client.
Decoding and encoding happen here; the work is :class:`fedtune.device.DeviceClient`'s.

Two ways in:

* a device SuperNode runs this app (``clientapp = "fedtune.app.device_app:app"``) with
  ``ondevice.onnx_path`` set;
* in a mixed federation, fedtune/app/client_app.py hands partition ids ``[0, ondevice.clients)`` to
  :func:`handle_train` (docs/device.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtune.app import APP_DIR
from fedtune.client.zo_protocol import answer_query, answer_train
from fedtune.config import RunConfig
from fedtune.device import DeviceClient, device_client_for
from fedtune.onnx import onnx_path_for
from fedtune.runs import config_from_run_config

__all__ = ["app", "handle_train"]

app = ClientApp()


def _threads() -> int:
    """ONNX Runtime threads: the budget the simulation (Ray) or the user gave this process."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def _client(cfg: RunConfig, run_dir: Path | None) -> DeviceClient:
    return device_client_for(cfg, onnx_path_for(cfg, run_dir), threads=_threads())


def handle_train(msg: Message, context: Context, cfg: RunConfig, run_dir: Path | None) -> Message:
    """Reply to a train message as a device: sync, local MeZO steps, report (or need-state)."""
    return answer_train(msg, context, cfg, _client(cfg, run_dir))


@app.query()
def query(msg: Message, context: Context) -> Message:
    return answer_query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, run_dir = config_from_run_config(context.run_config, APP_DIR)
    return handle_train(msg, context, cfg, run_dir)
