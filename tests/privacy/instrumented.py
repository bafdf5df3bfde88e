"""What tests/privacy/secagg_run.py and release_run.py share: a run opened as `fedtune run`
opens it, and a grid that forwards everything to Flower's."""

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
