"""Start a Flower SuperNode for one silo: its data partition, its device, its key.

    python -m deploy.supernode --superlink superlink.example.org:8000 --ca certs/ca.crt \\
        --key keys/silo-0 --partition-id 0 --num-partitions 3 --device cuda:0

Checks the key, the CA, the device and the local Runtime API port, then dials the SuperLink
and completes a TLS handshake that trusts only ``--ca`` (timeout ``--connect-timeout``):
an unreachable SuperLink, a wrong CA or an expired / misnamed server certificate is one
line ``error: ... (fix: ...)`` and exit status 2. Then runs ``flower-supernode``, passes its
log through (each line prefixed with the local time), prints ``supernode: connected as node ID ...`` once the SuperLink accepts the
key, and turns Flower's refusal of an unregistered key (exit 305) into one line too.

A SuperNode that crashed (or was killed) cannot rejoin at once: the SuperLink counts its old
session as online until the heartbeat lapses (2 x 30 s) and refuses the key meanwhile, with
the same message as for an unknown key. A key that was accepted before (``KEY.node-id``
holds its node ID) is therefore retried for up to ``--rejoin-wait`` seconds.

The partition and device reach the ClientApp through Flower's node config
(``partition-id``, ``num-partitions``, ``device``), so the experiment's TOML stays the same
on every silo and in simulation. So does ``cache-dir`` (``--cache-dir``, by default
``fedtune-cache`` in the node's FLWR_HOME): Flower runs each message in a fresh ClientApp
process, and a ZO client caches its synced weights there so that the next process replays
only the rounds since, not the whole seed log (fedtune/client/node_cache.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.checks import (
    DeployError,
    check_device,
    check_node_key,
    check_port_free,
    check_superlink_reachable,
    parse_address,
)
from deploy.superlink import FLOWER_ENV

__all__ = ["explain_exit", "main", "node_config", "superexec_command", "supernode_command"]

_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


def node_config(partition_id: int, num_partitions: int, device: str | None, extra: str = "") -> str:
    """Flower's ``--node-config`` string (TOML values: strings quoted)."""
    text = f"partition-id={partition_id} num-partitions={num_partitions}"
    if device is not None:  # else the experiment's `device` key decides
        text += f' device="{device}"'
    return f"{text} {extra}".strip()


def cache_dir(args: argparse.Namespace) -> Path | None:
    """Where this node's ClientApps cache their synced weights (None: ``--cache-dir ""``)."""
    if args.cache_dir is not None:
        return Path(args.cache_dir).expanduser().resolve() if args.cache_dir else None
    home = args.flwr_home or Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()
    return Path(home).resolve() / "fedtune-cache"


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line for the parsed arguments."""
    cache = cache_dir(args)
    extra = args.node_config
    if cache is not None:
        extra += f' cache-dir="{cache}" cache-keep={args.cache_keep}'
    return [
        "flower-supernode",
        "--superlink", args.superlink,
        "--root-certificates", str(args.ca),
        "--auth-supernode-private-key", str(args.key),
        "--node-config", node_config(args.partition_id, args.num_partitions, args.device, extra),
        "--host", "127.0.0.1",  # the Runtime API serves this node's own ClientApp processes only
        "--port", str(args.runtime_port),
        "--max-wait-time", str(args.max_wait_time),
        # warm: no SuperExec of Flower's; deploy.superexec (started beside it) runs the ClientApps
        *(["--isolation", "process"] if args.clientapp_start == "warm" else []),
    ]


def superexec_command(args: argparse.Namespace, supernode_pid: int) -> list[str]:
    """The warm SuperExec (:mod:`deploy.superexec`) serving the SuperNode ``supernode_pid``."""
    return [
        sys.executable, "-m", "deploy.superexec",
        "--runtime-api-address", f"127.0.0.1:{args.runtime_port}", "--insecure",  # loopback only, as Flower's own
        "--parent-pid", str(supernode_pid),  # it stops when the SuperNode does
    ]


def explain_exit(returncode: int, output: str, args: argparse.Namespace, known: bool = False) -> str:
    """One line for a ``flower-supernode`` that stopped on its own (``known``: the key was accepted before)."""
    if "Failed to activate SuperNode" in output and known:
        return DeployError(
            f"the SuperLink at {args.superlink} still refuses key {args.key}, accepted before, after "
            f"--rejoin-wait {args.rejoin_wait:g} s",
            "check `flwr supernode ls` on the SuperLink's side: the key may have been unregistered",
        ).line()
    if "Failed to activate SuperNode" in output:
        return DeployError(
            f"the SuperLink at {args.superlink} refused this SuperNode: key {args.key} is not registered",
            f"on the SuperLink's side run: flwr supernode register {args.key}.pub <connection>",
        ).line()
    if "Giving up reconnection" in output:
        return DeployError(
            f"lost the SuperLink at {args.superlink} and gave up after --max-wait-time {args.max_wait_time:g} s",
            "restart this SuperNode once the SuperLink is back, or raise --max-wait-time",
        ).line()
    errors = [line for line in output.splitlines() if "ERROR" in line or "Error" in line]
    last = errors[-1].strip() if errors else "no error line"
    return f"error: flower-supernode exited with status {returncode}: {last} (fix: read its log above)"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.supernode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--superlink", required=True, help="the SuperLink as host:port")
    parser.add_argument("--ca", type=Path, required=True, help="the federation's CA certificate (ca.crt)")
    parser.add_argument("--key", type=Path, required=True, help="this SuperNode's private key (deploy.pki node-key)")
    parser.add_argument("--partition-id", type=int, required=True, help="this silo's data partition")
    parser.add_argument("--num-partitions", type=int, required=True, help="how many partitions the data has")
    parser.add_argument(
        "--device", help="cpu or cuda:N for this silo's ClientApp (default: the experiment's `device` key)"
    )
    parser.add_argument(
        "--runtime-port", type=int, default=9094,
        help="local port of the SuperNode's Runtime API; distinct per SuperNode on one machine (default 9094)",
    )
    parser.add_argument("--node-config", default="", help="extra node config, e.g. 'key=\"value\"'")
    parser.add_argument("--flwr-home", type=Path, help="where this SuperNode installs apps (FLWR_HOME)")
    parser.add_argument(
        "--cache-dir",
        help="where a ZO ClientApp caches its synced weights between messages (default: FLWR_HOME/fedtune-cache; "
        '"" for none: every message then replays the seed log from round 0)',
    )
    parser.add_argument(
        "--cache-keep", type=int, default=2,
        help="how many runs' weight caches the node keeps, the most recently written (default 2)",
    )
    parser.add_argument(
        "--threads", type=int,
        help="CPU threads per ClientApp (OMP_NUM_THREADS); set it when SuperNodes share a machine (default: all cores)",
    )
    parser.add_argument(
        "--clientapp-start", choices=("warm", "cold"), default="warm",
        help="warm: each ClientApp is forked from a process that imported torch and transformers once "
        "(deploy/superexec.py); cold: Flower's own SuperExec starts a new process per message (default warm)",
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds for the start-up check")
    parser.add_argument(
        "--rejoin-wait", type=float, default=90.0,
        help="seconds to keep retrying when a key that connected before is refused: the SuperLink frees a "
        "crashed node's session only when its heartbeat lapses, 60 s after the last (default 90)",
    )
    parser.add_argument(
        "--max-wait-time", type=float, default=300.0,
        help="seconds Flower keeps reconnecting to a lost SuperLink before it gives up (default 300)",
    )
    args = parser.parse_args(argv)
    if args.cache_keep < 1:
        parser.error(f"--cache-keep must be >= 1 (the run being written), got {args.cache_keep}")
    if not 0 <= args.partition_id < args.num_partitions:
        parser.error(f"--partition-id must be in [0, {args.num_partitions}), got {args.partition_id}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if shutil.which("flower-supernode") is None:
            raise DeployError("flower-supernode is not on PATH", 'install Flower: pip install "flwr==1.41.*"')
        parse_address(args.superlink)
        check_node_key(args.key)
        if args.device is not None:
            check_device(args.device)
        check_port_free("127.0.0.1", args.runtime_port, "the SuperNode's Runtime API", "--runtime-port")
        check_superlink_reachable(args.superlink, args.ca, timeout=args.connect_timeout)
    except DeployError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 2

    env = {**os.environ, **FLOWER_ENV}
    if args.flwr_home:
        env["FLWR_HOME"] = str(args.flwr_home)
    if args.threads:  # torch sizes its thread pool from these at import
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    # Flower's SuperExec asks the SuperNode for a new task every second by default: up to
    # 1 s added to every message. A local poll every 0.1 s costs nothing measurable.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    stopping = threading.Event()
    child: subprocess.Popen[str] | None = None

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    marker = args.key.with_name(args.key.name + ".node-id")  # written once the SuperLink accepted the key
    deadline = time.monotonic() + args.rejoin_wait
    retrying = False
    while not stopping.is_set():
        child = subprocess.Popen(
            supernode_command(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        executor = None
        if args.clientapp_start == "warm":
            executor = subprocess.Popen(
                superexec_command(args, child.pid), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1,
            )
        returncode, output = _supervise(child, executor, args, marker)
        if stopping.is_set() or returncode in (0, -signal.SIGTERM):
            return 0
        refused = "Failed to activate SuperNode" in output
        if refused and marker.is_file() and time.monotonic() < deadline:
            # This key was accepted before: the SuperLink still counts the node's previous
            # session as online (it was killed without saying goodbye) until its heartbeat
            # lapses, 2 x 30 s after the last one. Wait that out instead of failing.
            if not retrying:
                print(f"supernode: the SuperLink still holds node {marker.read_text().strip()}'s previous "
                      f"session; retrying for up to {args.rejoin_wait:g} s", flush=True)
            retrying = True
            time.sleep(2)
            continue
        print(explain_exit(returncode, output, args, known=marker.is_file()), file=sys.stderr, flush=True)
        return 1
    return 0


def _supervise(
    child: subprocess.Popen[str], executor: subprocess.Popen[str] | None, args: argparse.Namespace, marker: Path
) -> tuple[int, str]:
    """Pass the SuperNode's (and the warm SuperExec's) log through, announce the connection;
    returns (the SuperNode's exit status, log tail). The SuperExec stops with the SuperNode."""
    tail: list[str] = []  # the log's last lines, to explain an exit

    def pump(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"{datetime.datetime.now():%H:%M:%S.%f}"[:-3] + " " + line)  # Flower's lines have no time
            if match := _NODE_ID.search(line):
                marker.write_text(match.group(1) + "\n")
                print(f"supernode: connected as node ID {match.group(1)} (partition {args.partition_id}/"
                      f"{args.num_partitions}, device {args.device or 'from the experiment'})")
            sys.stdout.flush()
            tail.append(line)
            del tail[:-200]

    readers = [threading.Thread(target=pump, args=(p,), daemon=True) for p in (child, executor) if p is not None]
    for reader in readers:
        reader.start()
    returncode = child.wait()
    _stop_orphans(child.pid)
    if executor is not None:
        try:
            executor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            executor.kill()
            executor.wait()
    for reader in readers:
        reader.join(timeout=5)  # the orphans held the pipe open; they are gone now
    return returncode, "".join(tail)


def _stop_orphans(parent_pid: int) -> None:
    """Stop the SuperExec a dead ``flower-supernode`` leaves behind (it watches ``--parent-pid``
    only every few seconds, and holds our log pipe open meanwhile)."""
    if not Path("/proc").is_dir():  # not Linux: the SuperExec notices its parent is gone by itself
        return
    needle = f"--parent-pid\0{parent_pid}\0".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() + b"\0":
                os.kill(int(proc.name), signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue

if __name__ == "__main__":
    sys.exit(main())
