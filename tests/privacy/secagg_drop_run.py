"""A real `fedtune` SecAgg+ simulation in which chosen nodes drop out at chosen stages
(tests/privacy/test_secagg_drops.py).

    python tests/privacy/secagg_drop_run.py CONFIG OUT_DIR STAGE=NODES [STAGE=NODES ...]

The real ServerApp and ClientApp in Flower's simulation engine, every round. The
simulation nodes whose ``partition-id`` (their index in the pool, whatever partition the
server lends them) is in NODES (comma-separated) raise when a message of SecAgg+ stage
STAGE (``setup``, ``share_keys``, ``collect_masked_vectors`` or ``unmask``) reaches them,
before ``secaggplus_mod`` sees it: a client that dies at that stage. Recorded in OUT_DIR:

- every client that trains saves its clear dense vector and weight to
  clear-r<round>-p<partition>.npz (after fedtune's train handler answered, before the mod
  masks the reply): the reference the test sums in clear;
- every run of ``fedtune.server.secagg.secure_mean`` (the real one, called through) saves
  what SecAgg+ gave the server to sum-r<round>-<run>.npz: ``formed`` and, if it formed,
  the unmasked ``mean``;
- server.json names the run directory.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

import numpy as np
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedtune._flwr_compat import RECORD_KEY_CONFIGS
from fedtune._flwr_compat import SecAggKey as Key
from tests.privacy.instrumented import open_run, recording_client

config_path, out = sys.argv[1], Path(sys.argv[2])
drops = {stage: {int(n) for n in nodes.split(",")} for stage, nodes in (arg.split("=") for arg in sys.argv[3:])}
cfg, run_dir = open_run(config_path)

import fedtune.app.server_app as real_server
import fedtune.server.secagg as server_secagg
from fedtune.client.secagg import secagg_when_asked


def drop(msg, context, call_next):
    """Outside secaggplus_mod: the chosen nodes die on the chosen stage's message."""
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        if int(context.node_config["partition-id"]) in drops.get(stage, ()):
            raise RuntimeError(f"injected drop-out at the {stage} stage")
    return call_next(msg, context)


client = recording_client([drop, secagg_when_asked], out)


real_secure_mean = server_secagg.secure_mean
runs = {}  # round -> SecAgg+ runs so far


def recorded_secure_mean(cfg, grid, server_round, *args, **kwargs):
    secure = real_secure_mean(cfg, grid, server_round, *args, **kwargs)
    run = runs[server_round] = runs.get(server_round, 0) + 1
    formed = secure.mean is not None
    np.savez(out / f"sum-r{server_round}-{run}.npz", formed=formed,
             mean=secure.mean if formed else np.zeros(0))
    return secure


server_secagg.secure_mean = recorded_secure_mean
server = ServerApp()


@server.main()
def main(grid, context):
    real_server.main(grid, context)
    (out / "server.json").write_text(json.dumps({"run_dir": str(run_dir)}))


run_simulation(server, client, num_supernodes=cfg.federation.num_clients,
               backend_config={"client_resources": {"num_cpus": 1}})
