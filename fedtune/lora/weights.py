"""What a first-order client trains: PEFT LoRA adapters, or the model's own tensors.

The first-order algorithms (``family = "lora"``: FedIT, FedProx, ...) train PEFT LoRA adapters
(``[lora]``) by default. Those that declare the ``trainable`` feature (FedIT, FedProx) train
the model's own tensors instead when ``model.trainable`` selects some: ``["*"]`` is full
fine-tuning (FedIT then is FedAvg, McMahan et al. 2017, and FedProx its proximal variant,
Li et al. 2020), ``["classifier.*", "*.layer.5.*"]`` the head and the top layer. The server
and every client build the model through :func:`trained_model`, so they agree on the tensors
and their names (``named_parameters()`` names), which key the payloads.
"""

from __future__ import annotations

from typing import Any

import torch

from fedtune import algorithms

from .adapters import adapter_parameters, inject_lora

__all__ = ["trained_model", "trains_model_tensors"]


def trains_model_tensors(cfg: Any) -> bool:
    """Whether a first-order run tunes the model's own tensors (``model.trainable`` given, or
    an algorithm that names them: Offsite-Tuning's adapter blocks) rather than adapters."""
    return bool(cfg.model.trainable) or (algorithms.get(cfg.algorithm.name).tuned is not None
                                         and not _adapter_lora(cfg))


def _adapter_lora(cfg: Any) -> bool:
    """Whether the algorithm's tuned blocks carry LoRA adapters (Offsite-Tuning's ``offsite.lora``)."""
    spec = algorithms.get(cfg.algorithm.name)
    return spec.adapter_lora is not None and spec.adapter_lora(cfg)  # the registry makes it come with `tuned`


def _lora_on_tuned_blocks(model: torch.nn.Module, cfg: Any) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """``model`` with PEFT LoRA on the blocks among the algorithm's tuned tensors (a seq-cls
    head in full); the adapter's tensors under the full model's names, so an emulator's client
    and the owner's full model key the same tensor alike (:func:`fedtune.emulator.full_name`).
    Both inject the same modules in the same order, so the initial adapters are bit-identical."""
    from fedtune import emulator as emu

    spec = algorithms.get(cfg.algorithm.name)
    assert spec.tuned is not None
    wanted = set(spec.tuned(cfg, model))
    full = emu.global_names(model)
    prefix, _ = emu.block_stack(model)
    blocks = sorted({index for name in full if full[name] in wanted
                     and (index := emu.block_index(prefix, name)) is not None})
    wrapped = inject_lora(model, cfg.lora, cfg.model.task, cfg.seed,
                          layers=blocks, layers_pattern=prefix.rpartition(".")[2])
    return wrapped, {emu.full_name(wrapped, name): p for name, p in adapter_parameters(wrapped).items()}


def trained_model(
    workload: Any, cfg: Any, *, client: bool = False
) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """The run's model and the tensors its first-order clients train, by name.

    Adapters: the model wrapped by :func:`~fedtune.lora.adapters.inject_lora`, its adapter
    tensors under PEFT's names. Model tensors: the model as built, the tensors
    ``model.trainable`` (or the algorithm, :attr:`fedtune.algorithms.Algorithm.tuned`) selects,
    the others frozen (``requires_grad = False``, so backward computes no gradient for them).
    ``client``: a client's model (Offsite-Tuning: the emulator); the server's is the full one.
    An algorithm whose tuned blocks carry LoRA (``offsite.lora``): adapters on those blocks alone.
    """
    model = workload.build_model(client=client)
    if _adapter_lora(cfg):
        return _lora_on_tuned_blocks(model, cfg)
    if not trains_model_tensors(cfg):
        model = inject_lora(model, cfg.lora, cfg.model.task, cfg.seed)
        return model, adapter_parameters(model)
    params = dict(workload.trainable(model))  # by the full model's names (an emulator's mapped back)
    chosen = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return model, params
