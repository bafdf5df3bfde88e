"""A `fedtune run` whose client of partition 1 misbehaves in round 2 (tests/test_resilience.py).

    python tests/faulty_run.py CONFIG {exit,raise,hang}

exit: the client's process dies (os._exit); raise: the ClientApp raises; hang: it sleeps
past the round timeout. Everything else is the real ServerApp and ClientApp in Flower's
simulation engine.
"""

import os
import sys
import time

sys.path.insert(0, os.getcwd())

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from fedtune import wire
from fedtune.config import load_config
from fedtune.runs import ENV_CONFIG, ENV_RESUME, ENV_RUN_DIR, configure_logging, create_run_dir

config_path, mode = sys.argv[1], sys.argv[2]
cfg = load_config(config_path)
run_dir = create_run_dir(cfg)
os.environ.update({ENV_CONFIG: str(run_dir / "config.toml"), ENV_RUN_DIR: str(run_dir), ENV_RESUME: "0"})
configure_logging()

import fedtune.app.client_app as real
from fedtune.app.server_app import app as server_app
from fedtune.client.zo_protocol import partition_of

faulty = ClientApp()


@faulty.query()
def query(msg, context):
    return real.query(msg, context)


@faulty.train()
def train(msg, context):
    if partition_of(msg, context)[0] == 1 and int(msg.content[wire.CONFIG][wire.ROUND]) == 2:
        if mode == "exit":
            os._exit(3)
        if mode == "raise":
            raise RuntimeError("injected client failure")
        if mode == "hang":
            time.sleep(3 * cfg.federation.round_timeout_s)
    return real.train(msg, context)


run_simulation(server_app, faulty, num_supernodes=cfg.federation.simulated_nodes,
               backend_config={"client_resources": {"num_cpus": 1}})
