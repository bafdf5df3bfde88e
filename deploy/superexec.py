"""Flower's SuperExec, with ClientApp processes that start warm: forked, not exec'd.

    python -m deploy.superexec --runtime-api-address 127.0.0.1:9094 --insecure --parent-pid PID

Flower 1.41 runs every message in a new ``flwr-clientapp`` process (one message, then it
exits), and a fedtune ClientApp spends most of its start importing torch and transformers:
~5 s of CPU at every message, on every node, every round (``bench/deploy.py``'s
``clientapp_cold_start_s``). This is Flower's own SuperExec (``flower-superexec``: its
command line, its loop over the SuperNode's Runtime API, task acquisition, authentication)
with one part swapped: its executor. Flower's starts ``flwr-clientapp``; this one forks a
parent that imported the heavy third-party modules once (``--preload``), and the child runs
Flower's own ``run_clientapp`` (pull the message, install and load the FAB, run the app,
push the reply), exactly as ``flwr-clientapp`` would. ``python -m deploy.supernode`` runs
the SuperNode with ``--isolation process`` and starts this beside it (``--clientapp-start
cold``: Flower's stock SuperExec instead).

What the parent holds, and why that is safe:

- Only third-party modules: the app's own code (``fedtune``, ``client/``) is imported by the
  child from the installed FAB, as in a fresh process, so a newer FAB is never shadowed.
- No torch op has run, so no thread pool exists to be copied half-way, and CUDA is not
  initialised (torch does that lazily), so a child can still use ``cuda:N``; the parent's
  other threads (Flower's parent monitor, OpenBLAS's pool, which handles forks itself) hold
  no lock a child needs.
- Every child reseeds Python's, numpy's and torch's global generators from the OS: a forked
  child would otherwise draw the parent's stream again at every message, and fedtune's DP
  noise comes from numpy's global generator.
- A child drops the exit handlers it inherited (they close the parent's Runtime API client)
  and leaves with ``os._exit``, never through the parent's ``atexit`` hooks.

Other task types (not ClientApps) start as Flower starts them, in a new process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from fedtune._flwr_compat import (
    ExecutionSpec,
    LaunchResult,
    SubprocessExecutor,
    TaskType,
    exit_handler,
    run_clientapp,
    run_flower_superexec,
    validate_and_resolve_root_certificates,
)

__all__ = ["DEFAULT_PRELOAD", "ForkExecutor", "forget_fedtune", "main", "preload", "reseed"]

log = logging.getLogger("fedtune.superexec")

# The imports that make a fedtune ClientApp's start slow (`python -X importtime`): torch,
# transformers' model classes for the families fedtune names (fedtune.models), safetensors
# and Flower's app API. A missing one is skipped (a torch-free device node has no torch).
# Not onnxruntime: it starts a thread at import, and a device node's start is light anyway.
DEFAULT_PRELOAD = (
    "numpy",
    "torch",
    "safetensors.torch",
    "flwr.app",
    "flwr.clientapp",
    "transformers",
    "transformers.models.opt.modeling_opt",
    "transformers.models.llama.modeling_llama",
    "transformers.models.bert.modeling_bert",
    "peft",
)


def preload(modules: Sequence[str]) -> list[str]:
    """Import ``modules`` (the ones that import); returns those that did."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.info("preload: skipped %s (%s)", name, exc)
            continue
        loaded.append(name)
    return loaded


def reseed() -> None:
    """Give a forked child fresh global random streams, seeded from the OS."""
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


class ForkExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that a ClientApp task forks this process.

    The child runs Flower's ``run_clientapp`` (:mod:`fedtune._flwr_compat`) with the
    spec's address, token, TLS settings and parent PID, as ``flwr-clientapp`` would.
    Finished children are reaped on every poll of the SuperExec's loop.
    """

    def __init__(self) -> None:
        self.children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        certificates = validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure)
        try:
            pid = os.fork()
        except OSError as exc:
            return LaunchResult.failed(f"could not fork a ClientApp process: {exc}")
        if pid == 0:  # the child: never returns
            _run_child(spec, certificates)
        self.children.add(pid)
        log.info("task %d: ClientApp forked as process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.discard(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    log.warning("ClientApp process %d exited with %d", pid, os.waitstatus_to_exitcode(status))


def _run_child(spec: ExecutionSpec, certificates: bytes | None) -> None:
    """The forked ClientApp process: Flower's ``run_clientapp``, then ``os._exit``."""
    code = 1
    try:
        exit_handler.registered_exit_handlers.clear()  # the parent's: they close its client
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        reseed()
        if spec.suppress_output:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=certificates,
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # flwr_exit ends with sys.exit
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 (a child must never return into the parent's loop)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def forget_fedtune() -> None:
    """Drop the ``fedtune`` modules this process imported (for Flower's internals, through
    :mod:`fedtune._flwr_compat`) from ``sys.modules``: a forked child must import the app's
    code from the installed FAB, as a fresh ``flwr-clientapp`` process would, not inherit
    this checkout's. The SuperExec parent calls it once, before it forks anything."""
    for name in [n for n in sys.modules if n == "fedtune" or n.startswith("fedtune.")]:
        del sys.modules[name]


def _split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.superexec", description=__doc__.split("\n\n")[0],
        epilog="Every other argument is flower-superexec's (see flower-superexec --help).",
    )
    parser.add_argument(
        "--preload", default=",".join(DEFAULT_PRELOAD),
        help="comma-separated modules the parent imports once (default: torch, transformers' fedtune model "
        "families, safetensors, peft, Flower's app API)",
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args, rest = _split_argv(sys.argv[1:] if argv is None else argv)
    forget_fedtune()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    loaded = preload([m for m in args.preload.split(",") if m])
    log.info("preloaded %d modules in %.1f s; ClientApps start by fork", len(loaded), time.perf_counter() - start)

    # Flower's loop asks its factory for the executor; it gets this one. Everything else is
    # flower-superexec as shipped (its --executor flag must stay the default: subprocess).
    run_flower_superexec(ForkExecutor, rest)


if __name__ == "__main__":
    main()
