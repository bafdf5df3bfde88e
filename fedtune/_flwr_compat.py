"""Every piece of Flower fedtune uses that is not Flower's documented public API, in one place.

Public API is ``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp`` and ``flwr.simulation``'s
functions; fedtune imports those directly. Everything else (the legacy ``flwr.server`` /
``flwr.common`` pieces that drive ``SecAggPlusWorkflow``, the serde and inflatable-object
internals behind :func:`fedtune.wire.message_bytes`, the DP building blocks, the SuperExec's
executor, ``TaskIdentity``) may change in any Flower release: it is imported here and
nowhere else, and ``tests/test_flwr_compat.py`` checks each name still behaves as fedtune
relies on (flwr 1.41).

The SuperExec pieces (``deploy/superexec.py`` only) load on first use: they cost a ClientApp
process more import time than the rest of this module together.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message.message import remove_content_from_message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitres
from flwr.proto import fleet_pb2, message_pb2, node_pb2
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server import LegacyContext
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import clip_inputs_inplace, compute_stdv
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.exit import exit_handler
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import ExecutionSpec
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

__all__ = [
    "RECORD_KEY_CONFIGS", "ClientAppCallable", "ExecutionSpec", "LaunchResult", "ProtoMessage", "SecAggKey",
    "Stage", "SubprocessExecutor", "TaskType", "bytes_to_ndarray",
    "clip_inputs_inplace", "compute_stdv", "dequantize", "exit_handler", "fit_content", "fit_vector",
    "fleet_pb2", "get_all_nested_objects", "get_object_tree", "masked_arrays", "message_from_proto",
    "message_pb2", "message_to_proto", "ndarray_to_bytes", "node_pb2", "quantize", "remove_content_from_message",
    "run_clientapp", "run_flower_superexec", "secagg_plus_mean", "secaggplus_mod", "set_task_identity",
    "validate_and_resolve_root_certificates",
]

# --- the SuperExec (deploy/superexec.py), loaded on first use --------------------------------

_LAZY = {
    "TaskType": "flwr.supercore.constant",
    "exit_handler": "flwr.supercore.exit",
    "LaunchResult": "flwr.supercore.superexec.executor",
    "SubprocessExecutor": "flwr.supercore.superexec.executor.subprocess_executor",
    "ExecutionSpec": "flwr.supercore.superexec.executor.types",
    "validate_and_resolve_root_certificates": "flwr.supercore.tls",
    "run_clientapp": "flwr.supernode.runtime.run_clientapp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_flower_superexec(make_executor: Callable[[], Any], argv: list[str]) -> None:
    """``flower-superexec`` as shipped, with ``argv``, except that its loop gets its executor
    from ``make_executor`` (Flower's loop asks the module-level ``get_executor`` factory)."""
    import sys

    # The modules, not the functions of the same names their packages export.
    cli = importlib.import_module("flwr.supercore.cli.flower_superexec")
    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    loop.get_executor = lambda *_args, **_kwargs: make_executor()  # type: ignore[attr-defined]
    sys.argv = ["flower-superexec", *argv]
    cli.flower_superexec()


# --- messages outside a Flower run -------------------------------------------------------------


def run_simulation(
    server_app: Any,
    client_app: Any,
    *,
    num_supernodes: int,
    backend_config: dict[str, Any],
    app_dir: str,
    run_config: dict[str, Any],
    verbose_logging: bool = False,
) -> None:
    """Flower's simulation engine with a run config, as ``flwr run`` gives one.

    ``flwr.simulation.run_simulation`` (public, deprecated) passes every app an empty run
    config; its internal ``_run_simulation`` takes a ``Run`` whose ``override_config`` each
    ClientApp's context fuses with ``[tool.flwr.app.config]`` of ``app_dir``'s pyproject.toml
    (so every key of ``run_config`` must be declared there), and the ServerApp's context.
    """
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.telemetry import EventType

    fused = get_fused_config_from_dir(Path(app_dir), run_config)  # raises on an undeclared key
    # what _run_simulation does when it makes the Run itself
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = dict(run_config)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_config=backend_config,
        app_dir=app_dir,
        is_app=True,  # only then do the nodes' contexts take their run config from app_dir + the Run
        run=run,
        server_app_context=server_context,
        verbose_logging=verbose_logging,
    )


def set_task_identity(
    *, run_id: int, node_id: int, task_id: int, setattr: Callable[[Any, str, Any], Any] = setattr
) -> None:
    """Give this process the task identity a Flower run sets, so that ``Message`` can be built
    outside one (tests, benches, a hand-driven node). ``setattr`` may be pytest's
    ``monkeypatch.setattr``, which undoes it after the test."""
    setattr(TaskIdentity, "_run_id", run_id)
    setattr(TaskIdentity, "_node_id", node_id)
    setattr(TaskIdentity, "_task_id", task_id)


# --- SecAgg+, the client's side -----------------------------------------------------------------


def fit_content(vector: np.ndarray, num_examples: int) -> RecordDict:
    """``vector`` and its weight in the legacy ``FitRes`` layout ``secaggplus_mod`` masks."""
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector]), num_examples, {})
    return fitres_to_recorddict(fitres, keep_input=False)


def fit_vector(content: RecordDict) -> tuple[np.ndarray, int]:
    """The ``(vector, num_examples)`` of :func:`fit_content`'s layout, before the mod masks it."""
    fitres = recorddict_to_fitres(content, keep_input=True)
    return parameters_to_ndarrays(fitres.parameters)[0], fitres.num_examples


# --- SecAgg+, the server's side -----------------------------------------------------------------


def masked_arrays(reply: Message) -> list[np.ndarray] | None:
    """A masked SecAgg+ reply's vectors (``[weight factor (1,), values (L,)]`` when well
    formed), or None if ``reply`` carries no masked vector.

    Raises:
        Exception: whatever Flower's decoder raises on bytes that are not an array.
    """
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None or SecAggKey.MASKED_PARAMETERS not in configs:
        return None
    return [bytes_to_ndarray(b) for b in cast(list, configs[SecAggKey.MASKED_PARAMETERS])]


class _HandBack(LegacyStrategy):
    """The legacy strategy the workflow needs: the given nodes in, the unmasked mean out."""

    def __init__(self, node_ids: list[int], grid: Grid) -> None:
        self.node_ids, self.grid = node_ids, grid
        self.mean: np.ndarray | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        # the FitIns are replaced by the caller's train content after the setup stage
        return [(GridClientProxy(n, self.grid, 0), FitIns(parameters, {})) for n in self.node_ids]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Any
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:  # every result carries the same parameters: the unmasked weighted mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)[0]
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _ContentSecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow, sending the caller's train content in its collect stage, and
    surviving a client that drops before its key shares went out.

    Flower 1.41 (``secaggplus_workflow.py``) keeps ``state.sampled_node_ids`` and
    ``state.nid_to_neighbours`` as the setup stage drew them, so its unmask stage treats a
    node that died in the setup or share-keys stage as a masking neighbour to unmask: it
    asks every survivor for that node's key share (``dead_nids = sampled - active``), which
    no survivor holds (``secaggplus_mod``'s ``_unmask`` raises ``KeyError``); it wants at
    least ``threshold`` shares for every sampled node, and it would rebuild a collect-stage
    drop's pairwise masks with neighbours that never masked with it (or have no public key).
    The round halts with no sum although enough clients are alive.

    A survivor masks its vector only with the neighbours whose shares reached it: those
    that answered the share-keys stage (the workflow forwards shares to, and collects
    vectors from, only those). So after that stage the set that matters is exactly the
    nodes still active: :meth:`share_keys_stage` narrows the sampled set and every
    neighbour set to it. The later stages then see the protocol as if only those had been
    sampled: the unmask stage reconstructs the private masks of the vectors it summed and
    the pairwise masks of the nodes that died after sharing their keys (collect stage),
    with each of its surviving neighbours. Drops in the collect and unmask stages are
    Flower's own handling, unchanged.
    """

    def __init__(self, contents: dict[int, RecordDict], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._contents = contents

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: self._contents[nid] for nid in state.nid_to_fitins}
        return ok

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        shared = set(state.active_node_ids)  # the nodes whose key shares went out
        state.sampled_node_ids = shared
        state.nid_to_neighbours = {nid: state.nid_to_neighbours[nid] & shared for nid in shared}
        return ok


def secagg_plus_mean(
    grid: Grid,
    contents: dict[int, RecordDict],
    *,
    server_round: int,
    num_shares: float,
    reconstruction_threshold: float,
    max_weight: float,
    clipping_range: float,
    quantization_range: int,
    modulus_range: int,
    timeout: float | None,
) -> np.ndarray | None:
    """One fit round of Flower's ``SecAggPlusWorkflow`` over ``contents`` (node id -> the
    content its collect-stage message carries), driven from a Message-API ServerApp.

    The workflow is legacy: it needs a legacy strategy in a ``LegacyContext``; the strategy
    here names the nodes of ``contents`` and keeps the unmasked result. The keyword
    arguments are the workflow's own.

    Returns:
        The weighted mean (float64) of the clients whose masked vectors were summed (those
        that answered the collect stage, unmask-stage drops included), or None if the
        protocol halted (a client with fewer than the threshold's live neighbours).
    """
    legacy = _HandBack(list(contents), grid)
    state = RecordDict({
        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
        MAIN_PARAMS_RECORD: ArrayRecord(),
    })
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                            strategy=legacy)
    workflow = _ContentSecAggPlus(
        contents, num_shares=num_shares, reconstruction_threshold=reconstruction_threshold, max_weight=max_weight,
        clipping_range=clipping_range, quantization_range=quantization_range, modulus_range=modulus_range,
        timeout=timeout,
    )
    workflow(grid, context)
    return legacy.mean
