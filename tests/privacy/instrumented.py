"""What tests/privacy/secagg_run.py, secagg_drop_run.py and release_run.py share: a run opened
as `fedtune run` opens it, a grid that forwards everything to Flower's, and a ClientApp that
records each client's clear SecAgg+ vector."""

import os
from pathlib import Path

from fedtune.config import RunConfig, load_config
from fedtune.runs import ENV_CONFIG, ENV_RESUME, ENV_RUN_DIR, configure_logging, create_run_dir


def open_run(config_path: str) -> tuple[RunConfig, Path]:
    """Load the config, create its run directory and point the apps at it (environment)."""
    cfg = load_config(config_path)
    run_dir = create_run_dir(cfg)
    os.environ.update({ENV_CONFIG: str(run_dir / "config.toml"), ENV_RUN_DIR: str(run_dir), ENV_RESUME: "0"})
    configure_logging()
    return cfg, run_dir


class ForwardingGrid:
    """A grid that hands every call to Flower's; subclasses record what passes."""

    def __init__(self, grid):
        self._grid = grid

    def __getattr__(self, name):
        return getattr(self._grid, name)


def recording_client(mods, out: Path):
    """The real ClientApp behind ``mods`` (call after :func:`open_run`); every client that trains
    under SecAgg+ saves its clear dense vector and weight to ``clear-r<round>-p<partition>.npz``
    (after fedtune's train handler answered, before ``secaggplus_mod`` masks the reply)."""
    import numpy as np
    from flwr.clientapp import ClientApp

    import fedtune.app.client_app as real_client
    from fedtune import wire
    from fedtune._flwr_compat import RECORD_KEY_CONFIGS, fit_vector
    from fedtune.client.zo_protocol import partition_of

    client = ClientApp(mods=list(mods))

    @client.query()
    def query(msg, context):
        return real_client.query(msg, context)

    @client.train()
    def train(msg, context):
        reply = real_client.train(msg, context)
        if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
            vector, weight = fit_vector(reply.content)
            partition, round_ = partition_of(msg, context)[0], int(msg.content[wire.CONFIG][wire.ROUND])
            np.savez(out / f"clear-r{round_}-p{partition}.npz", vector=vector, weight=weight)
        return reply

    return client
