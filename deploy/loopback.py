"""A whole federation on one machine: what the tests and ``bench/deploy.py`` run, and a demo.

    python -m deploy.loopback --nodes 3 --workdir /tmp/fed simulations/tiny-llama.toml --set rounds=2

Goes through the same steps as docs/deployment.md, with the same scripts, as separate
processes on loopback: a CA and server certificate, one key per SuperNode, the SuperLink
(TLS + SuperNode authentication), the connection in a private ``FLWR_HOME``, the keys
registered, N SuperNodes (each its own partition, Runtime API port and ``FLWR_HOME``), and
``flwr run . <connection>``. Ports are picked free at run time. Every process is started in
its own session so that stopping it stops its children (SuperExec, ClientApps) too.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.federation import register, write_connection
from deploy.pki import CA_CERT, make_ca, make_node_key, make_server_cert
from deploy.superlink import FLOWER_ENV

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["APP_DIR", "CountingProxy", "LoopbackFederation", "free_port"]

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower App: the repository root
CONNECTION = "loopback"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _wait_for(
    path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, offset: int = 0
) -> None:
    """Wait until ``text`` appears in ``path`` after byte ``offset`` (or ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text.encode() in path.read_bytes()[offset:]:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in {path} after {timeout:.0f} s:\n{path.read_text(errors='replace')[-3000:]}")


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process's session, then SIGKILL whatever is left after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children may not be
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


class CountingProxy:
    """A TCP relay that counts the bytes each way: what the loopback connection carries.

    SuperNodes dial the proxy, the proxy dials the SuperLink; TLS passes through untouched
    (the certificate names 127.0.0.1, which the proxy also is), so the counts are what a
    network would carry: TLS records, HTTP framing, Flower's protobuf messages.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.up = 0  # SuperNodes -> SuperLink, bytes
        self.down = 0  # SuperLink -> SuperNodes, bytes
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (server, "up"))
        sel.register(server, selectors.EVENT_READ, (client, "down"))
        try:
            while True:
                for key, _ in sel.select(timeout=60):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    peer, direction = key.data
                    peer.sendall(data)
                    with self._lock:
                        if direction == "up":
                            self.up += len(data)
                        else:
                            self.down += len(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class LoopbackFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback, started by the deploy scripts.

    Args:
        workdir: where certificates, keys, logs, state and FLWR_HOMEs go.
        num_nodes: SuperNodes to start (node i holds partition i of ``num_nodes``).
        unregistered: extra keys that are made but not registered (for refusal tests).
        proxy: route the SuperNodes through a :class:`CountingProxy`.
        threads: CPU threads per ClientApp (the SuperNodes share this machine's cores).
        clientapp_start: ``"warm"`` or ``"cold"``, as ``deploy.supernode --clientapp-start``.
    """

    def __init__(
        self, workdir: Path, num_nodes: int, *, unregistered: int = 0, proxy: bool = False, threads: int | None = None,
        clientapp_start: str = "warm",
    ) -> None:
        self.workdir = Path(workdir)
        self.num_nodes = num_nodes
        self.port = free_port()
        self.certs = self.workdir / "certs"
        self.flwr_home = self.workdir / "flwr-home"  # the submitting user's
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.flwr_home), "PYTHONUNBUFFERED": "1"}
        # The apps, the deploy scripts and fedtune are imported from this checkout.
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")]))
        for var in ("FEDTUNE_CONFIG", "FEDTUNE_RUN_DIR", "FEDTUNE_RESUME"):
            self.env.pop(var, None)
        self.superlink: subprocess.Popen[bytes] | None = None
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.runtime_ports = {i: free_port() for i in range(num_nodes + unregistered)}
        self.keys = [self.workdir / "keys" / f"silo-{i}" for i in range(num_nodes + unregistered)]
        self.proxy: CountingProxy | None = None
        self._log_offsets: dict[int, int] = {}
        self._want_proxy = proxy
        self.threads = threads
        self.clientapp_start = clientapp_start

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_address(self) -> str:
        """What SuperNodes dial: the SuperLink, or the counting proxy in front of it."""
        return f"127.0.0.1:{self.proxy.port}" if self.proxy else self.address

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        path = self.log(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", *args], cwd=self.workdir, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def start(self, connect_timeout: float = 90.0) -> Self:
        make_ca(self.certs)
        make_server_cert(self.certs, self.certs)
        for i, key in enumerate(self.keys):
            make_node_key(key, comment=f"silo-{i}")
        self.superlink = self._spawn("superlink", [
            "deploy.superlink", "--certs", str(self.certs), "--port", str(self.port),
            "--database", str(self.workdir / "superlink.db"),
        ])
        _wait_for(self.log("superlink"), "superlink: ready", connect_timeout, self.superlink)
        if self._want_proxy:
            self.proxy = CountingProxy(("127.0.0.1", self.port))
        write_connection(CONNECTION, self.address, self.certs / CA_CERT, home=self.flwr_home)
        old_home = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(self.flwr_home)
        try:
            for key in self.keys[: self.num_nodes]:
                register(key.with_name(key.name + ".pub"), CONNECTION)
        finally:
            if old_home is None:
                os.environ.pop("FLWR_HOME")
            else:
                os.environ["FLWR_HOME"] = old_home
        for i in range(self.num_nodes):
            self.start_node(i)
        for i in range(self.num_nodes):
            self.wait_connected(i, connect_timeout)
        return self

    def start_node(self, i: int, device: str = "cpu", clientapp_start: str | None = None) -> subprocess.Popen[bytes]:
        """Start SuperNode ``i`` (its key ``keys/silo-i``, partition ``i``); ``clientapp_start``
        overrides the federation's for this node."""
        self._log_offsets[i] = _log_size(self.log(f"node-{i}"))  # a restarted node appends to its log
        self.nodes[i] = self._spawn(f"node-{i}", [
            "deploy.supernode", "--superlink", self.node_address, "--ca", str(self.certs / CA_CERT),
            "--key", str(self.keys[i]), "--partition-id", str(i % self.num_nodes),
            "--num-partitions", str(self.num_nodes), "--device", device,
            "--runtime-port", str(self.runtime_ports[i]), "--flwr-home", str(self.workdir / f"flwr-home-node-{i}"),
            "--clientapp-start", clientapp_start or self.clientapp_start,
            *(["--threads", str(self.threads)] if self.threads else []),
        ])
        return self.nodes[i]

    def wait_connected(self, i: int, timeout: float = 90.0) -> None:
        _wait_for(self.log(f"node-{i}"), "supernode: connected", timeout, self.nodes[i], self._log_offsets[i])

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` and its ClientApp processes: no goodbye to the SuperLink."""
        proc = self.nodes.pop(i)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def submit(self, config: Path, overrides: str = "", timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """``flwr run . loopback`` with the experiment ``config``; waits for the run to end."""
        run_config = f'config="{config}"' + (f' set="{overrides}"' if overrides else "")
        return subprocess.run(
            ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", run_config, "--stream"],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def submit_async(self, config: Path, overrides: str = "") -> subprocess.Popen[str]:
        """Like :meth:`submit`, without waiting (output to ``logs/run.log``)."""
        run_config = f'config="{config}"' + (f' set="{overrides}"' if overrides else "")
        out = open(self.log("run"), "w")  # noqa: SIM115 (owned by the child)
        return subprocess.Popen(
            ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", run_config, "--stream"],
            cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )

    def close(self) -> None:
        for i in list(self.nodes):
            _stop_group(self.nodes.pop(i))
        if self.superlink is not None:
            _stop_group(self.superlink)
            self.superlink = None
        if self.proxy is not None:
            self.proxy.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.loopback", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the experiment TOML (as for fedtune run)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value overrides")
    args = parser.parse_args(argv)
    with LoopbackFederation(args.workdir, args.nodes) as federation:
        print(f"superlink on {federation.address}; {args.nodes} SuperNodes connected; logs in {args.workdir}/logs")
        result = federation.submit(args.config.resolve(), " ".join(args.overrides))
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
