"""A real `fedtune` simulation whose ServerApp records what every reply carries (tests/privacy/test_release.py).

    python tests/privacy/release_run.py CONFIG OUT_DIR

The real ServerApp and ClientApp in Flower's simulation engine; the grid handed to the
ServerApp forwards everything and writes OUT_DIR/replies.json: for every reply the server
received, the ``record/key`` names it carries (arrays, metrics and configs alike) and, for
metrics, the values.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from tests.privacy.instrumented import ForwardingGrid, open_run

config_path, out = sys.argv[1], Path(sys.argv[2])
cfg, run_dir = open_run(config_path)

import fedtune.app.client_app as real_client
import fedtune.app.server_app as real_server


def describe(content):
    """``{"keys": [record/key, ...], "metrics": {record/key: value}}`` of one reply's content."""
    keys, metrics = [], {}
    for name, record in content.array_records.items():
        keys += [f"{name}/{key}" for key in record]
    for name, record in content.metric_records.items():
        for key, value in record.items():
            keys.append(f"{name}/{key}")
            metrics[f"{name}/{key}"] = value
    for name, record in content.config_records.items():
        keys += [f"{name}/{key}" for key in record]
    return {"keys": sorted(keys), "metrics": metrics}


class RecordingGrid(ForwardingGrid):
    """The grid the ServerApp gets: forwards everything, keeps what the server receives."""

    def __init__(self, grid):
        super().__init__(grid)
        self.replies = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._grid.send_and_receive(list(messages), timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                self.replies.append({"type": reply.metadata.message_type, **describe(reply.content)})
        return replies


server = ServerApp()


@server.main()
def main(grid, context):
    recording = RecordingGrid(grid)
    real_server.main(recording, context)
    (out / "replies.json").write_text(json.dumps({"run_dir": str(run_dir), "replies": recording.replies}))


run_simulation(server, real_client.app, num_supernodes=cfg.federation.num_clients,
               backend_config={"client_resources": {"num_cpus": 1}})
