"""The ServerApp: one FedKSeed / federated-MeZO / federated-LoRA / split-prompt run, from config to saved weights.

Thin on purpose: it resolves the config, opens the run directory and hands the rounds to
:class:`fedtune.server.strategy.FedKSeed` (or :class:`fedtune.server.lora_strategy.FederatedLora` for the
LoRA rules, :class:`fedtune.server.split_strategy.SplitPrompt` for split-prompt).
"""

from __future__ import annotations

import logging
from typing import TypeVar

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtune import algorithms
from fedtune.app import APP_DIR
from fedtune.config import RunConfig
from fedtune.lora.weights import trains_model_tensors
from fedtune.onnx import onnx_path_for
from fedtune.runs import RunWriter, config_from_run_config, configure_logging, create_run_dir, resuming
from fedtune.server.lora_strategy import FederatedLora
from fedtune.server.polling import prompt
from fedtune.server.rounds import RoundLoop
from fedtune.server.strategy import FedKSeed

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_logging()
    grid = prompt(grid)  # deployed: replies seen within 0.5 s, not Flower's 3 s (fedtune/server/polling.py)
    cfg, run_dir = config_from_run_config(context.run_config, APP_DIR)
    # `fedtune run` opened the run directory and runs Flower's simulation engine: virtual
    # nodes can play any partition, so the server assigns them instead of asking each node
    simulated = run_dir is not None
    if run_dir is None:  # under `flwr run`: nobody has opened the run directory yet
        run_dir = create_run_dir(cfg)
    log.info("run directory: %s", run_dir)
    writer = RunWriter(run_dir, cfg.rounds, diverge_after=cfg.eval.diverge_after)
    resume = resuming(context.run_config)
    family = algorithms.get(cfg.algorithm.name).family
    if family in ("lora", "split") and resume:
        raise ValueError(f"--resume is not supported for {cfg.algorithm.name!r} yet: start a new run")
    if family == "split":  # split-prompt: its own strategy; saves the global prompt
        from fedtune.server.split_strategy import SplitPrompt
        from fedtune.split.model import save_prompt

        split = _run_fresh(SplitPrompt(cfg, run_dir), cfg, grid, writer, simulated)
        log.info("final prompt: %s", save_prompt(split.prompt, writer.model_dir))
        return
    if family == "lora":  # federated LoRA: its own strategy; saves a PEFT adapter (or the model it tuned)
        lora = _run_fresh(FederatedLora(cfg, run_dir), cfg, grid, writer, simulated)
        lora.workload.save(lora.model, writer.model_dir)
        what = "model" if trains_model_tensors(cfg) else "adapter (PEFT format)"  # model tensors: the whole model
        log.info("final %s: %s", what, writer.model_dir)
        return
    strategy = FedKSeed(cfg, run_dir, resume=resume)
    strategy.assign_partitions = simulated
    # round 0 is written again when no round had finished (start_rounds), so nothing is kept then
    kept = writer.truncate_after(strategy.state_round or -1) if resume else 0
    if strategy.state_round and kept < strategy.state_round:
        log.warning(
            "the crash came between logging round %d and writing its metrics line: the round's "
            "update is on the seed log and applied, its line in metrics.jsonl is missing",
            strategy.state_round,
        )
    if cfg.ondevice.clients and not cfg.ondevice.onnx_path:  # device clients load <run dir>/model.onnx
        from fedtune.onnx.export import export_run

        export_run(cfg, onnx_path_for(cfg, run_dir))
    writer.track(cfg, resumed=resume)
    try:
        strategy.start_rounds(grid, cfg.rounds, writer.write_round)
    finally:
        writer.close()
    strategy.workload.save(strategy.model, writer.model_dir)
    log.info("final weights: %s", writer.model_dir)


S = TypeVar("S", bound=RoundLoop)


def _run_fresh(strategy: S, cfg: RunConfig, grid: Grid, writer: RunWriter, simulated: bool) -> S:
    """Every round of a run that cannot resume (LoRA, split), round 0 first; returns the strategy."""
    strategy.assign_partitions = simulated
    writer.track(cfg)
    try:
        strategy.start_rounds(grid, cfg.rounds, writer.write_round)
    finally:
        writer.close()
    return strategy
