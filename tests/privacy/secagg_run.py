"""A real `fedtune` SecAgg+ simulation, instrumented on both sides (tests/privacy/test_secagg_simulation.py).

    python tests/privacy/secagg_run.py CONFIG OUT_DIR

The real ServerApp and ClientApp in Flower's simulation engine, with two additions:

- each client, after fedtune's train handler answered and before ``secaggplus_mod`` masks
  the reply, saves its clear dense vector and weight to OUT_DIR/clear-r<round>-p<partition>.npz:
  the reference the test sums in clear;
- the ServerApp's grid records everything the server receives; the masked vectors of
  stage 2 go to OUT_DIR/masked-r<round>-<n>.npy, and any reply that carries a step list
  (an update in clear) is counted in OUT_DIR/server.json.

From round 2 on, three clients misbehave: partition 0 raises when asked for its masked
vector (it drops out in stage 2), partition 1 truncates its masked vector (the server must
drop it), partition 2 fails in the unmask stage (after its masked vector was summed).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedtune import wire
from fedtune._flwr_compat import RECORD_KEY_CONFIGS, Stage, bytes_to_ndarray, ndarray_to_bytes
from fedtune._flwr_compat import SecAggKey as Key
from tests.privacy.instrumented import ForwardingGrid, open_run, recording_client

config_path, out = sys.argv[1], Path(sys.argv[2])
cfg, run_dir = open_run(config_path)

import fedtune.app.server_app as real_server
from fedtune.client.secagg import secagg_when_asked
from fedtune.client.zo_protocol import partition_of

MISBEHAVE_FROM = 2
NODE_PARTITION = "test.partition"


def _stage(msg):
    return msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]


def misbehave(msg, context, call_next):
    """Outside secaggplus_mod: sees the protocol's messages and the masked replies."""
    if not msg.has_content() or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    stage = _stage(msg)
    if stage == Stage.COLLECT_MASKED_VECTORS:
        config = msg.content[wire.CONFIG]
        partition, round_ = partition_of(msg, context)[0], int(config[wire.ROUND])
        context.state[NODE_PARTITION] = ConfigRecord({"partition": partition, "round": round_})
        if round_ >= MISBEHAVE_FROM and partition == 0:
            raise RuntimeError("injected drop-out before the masked vector")
        reply = call_next(msg, context)
        if round_ >= MISBEHAVE_FROM and partition == 1:
            configs = reply.content.config_records[RECORD_KEY_CONFIGS]
            masked = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
            configs[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(masked[0]), ndarray_to_bytes(masked[1][:-1])]
        return reply
    if stage == Stage.UNMASK and NODE_PARTITION in context.state:
        mine = context.state[NODE_PARTITION]
        if int(mine["round"]) >= MISBEHAVE_FROM and int(mine["partition"]) == 2:
            raise RuntimeError("injected drop-out in the unmask stage")
    return call_next(msg, context)


client = recording_client([misbehave, secagg_when_asked], out)


class RecordingGrid(ForwardingGrid):
    """The grid the ServerApp gets: forwards everything, keeps what the server receives."""

    def __init__(self, grid):
        super().__init__(grid)
        self.masked, self.clear_steps, self.replies = 0, 0, 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                continue
            self.replies += 1
            state = reply.content.get(wire.STATE)
            if state is not None and wire.STEP_LIST in state:
                self.clear_steps += 1
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs:
                round_ = int(messages[0].metadata.group_id)
                vector = bytes_to_ndarray(configs[Key.MASKED_PARAMETERS][1])
                np.save(out / f"masked-r{round_}-{self.masked}.npy", vector)
                self.masked += 1
        return replies


server = ServerApp()


@server.main()
def main(grid, context):
    recording = RecordingGrid(grid)
    real_server.main(recording, context)
    (out / "server.json").write_text(json.dumps(
        {"replies": recording.replies, "masked": recording.masked, "clear_steps": recording.clear_steps,
         "run_dir": str(run_dir)}))


run_simulation(server, client, num_supernodes=cfg.federation.num_clients,
               backend_config={"client_resources": {"num_cpus": 1}})
