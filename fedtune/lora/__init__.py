"""Federated LoRA: PEFT adapters and the server rules FedIT, FFA-LoRA and LoRA-FAIR.

Importing this package registers the three rules (``algorithm.name`` = ``fedit``,
``ffa-lora``, ``lorafair``). Adapters are PEFT's own (:mod:`~fedtune.lora.adapters`), so a
federated run's result loads with ``peft.PeftModel.from_pretrained``.
"""

from . import fair, fedit, ffa, hetlora  # noqa: F401  (registers the rules)
from .adapters import adapter_parameters, inject_lora, read_state, save_adapter, write_state
from .factors import Update, aggregation_bias, factor_pairs, weighted_mean
from .fair import correct, project, solve_correction
from .rules import Aggregate, LoraRule, register_rule, rule_class, rule_names

__all__ = [
    "Aggregate",
    "LoraRule",
    "Update",
    "adapter_parameters",
    "aggregation_bias",
    "correct",
    "factor_pairs",
    "inject_lora",
    "project",
    "read_state",
    "register_rule",
    "rule_class",
    "rule_names",
    "save_adapter",
    "solve_correction",
    "weighted_mean",
    "write_state",
]
