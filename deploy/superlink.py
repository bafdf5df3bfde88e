"""Start a Flower SuperLink with TLS and SuperNode authentication on, after checking its inputs.

    python -m deploy.superlink --certs certs --host 0.0.0.0 --port 8000 --name superlink.example.org

Checks the CA, server certificate and key (present, in date, matching, signed by the CA,
naming every host SuperNodes dial) and that the port is free; any problem is one line
``error: ... (fix: ...)`` and exit status 2. Then runs ``flower-superlink`` with
``--enable-supernode-auth``, runtime dependency installation off (offline sites; see
docs/deployment.md), prints ``superlink: ready on HOST:PORT ...`` once it accepts TLS
connections, and lives as long as it does. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.checks import DeployError, check_port_free, check_server_files, check_superlink_reachable
from deploy.pki import CA_CERT, SERVER_CERT, SERVER_KEY

__all__ = ["FLOWER_ENV", "main", "superlink_command"]

# Offline sites: Flower must not `uv sync` the app's dependencies (it would reach for the
# package index, fail, and report success), phone home, or check for updates.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def superlink_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-superlink`` command line for the parsed arguments."""
    command = [
        "flower-superlink",
        "--ssl-ca-certfile", str(args.ca),
        "--ssl-certfile", str(args.cert),
        "--ssl-keyfile", str(args.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", args.host,
        "--port", str(args.port),
        "--database", str(args.database),
    ]
    if args.log_file:
        command += ["--log-file", str(args.log_file)]
    return command


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.superlink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", type=Path, help=f"directory with {CA_CERT}, {SERVER_CERT}, {SERVER_KEY}")
    parser.add_argument("--ca", type=Path, help=f"CA certificate (default: CERTS/{CA_CERT})")
    parser.add_argument("--cert", type=Path, help=f"server certificate (default: CERTS/{SERVER_CERT})")
    parser.add_argument("--key", type=Path, help=f"server private key (default: CERTS/{SERVER_KEY})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for all (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="the one port of Fleet, Control and Runtime APIs")
    parser.add_argument(
        "--name", action="append", default=[],
        help="host name or IP SuperNodes dial; checked against the certificate (repeatable)",
    )
    parser.add_argument(
        "--database", type=Path, default=Path("superlink.db"),
        help="SQLite state: registered SuperNode keys and runs survive a restart (default superlink.db)",
    )
    parser.add_argument("--log-file", type=Path, help="also write the SuperLink's log here (rotated)")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for the port to open")
    args = parser.parse_args(argv)
    for name, default in (("ca", CA_CERT), ("cert", SERVER_CERT), ("key", SERVER_KEY)):
        if getattr(args, name) is None:
            if args.certs is None:
                parser.error(f"pass --certs DIR or --{name}")
            setattr(args, name, args.certs / default)
    return args


def _dial_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if shutil.which("flower-superlink") is None:
            raise DeployError("flower-superlink is not on PATH", 'install Flower: pip install "flwr==1.41.*"')
        check_server_files(args.ca, args.cert, args.key, (args.host, *args.name))
        check_port_free(args.host, args.port, "the SuperLink", "--port")
    except DeployError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 2

    env = {**os.environ, **FLOWER_ENV}
    child = subprocess.Popen(superlink_command(args), env=env)

    def stop(signum: int, _frame: object) -> None:
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    address = f"{_dial_host(args.host)}:{args.port}"
    if ":" in _dial_host(args.host):
        address = f"[{_dial_host(args.host)}]:{args.port}"
    deadline = time.monotonic() + args.ready_timeout
    while True:
        if child.poll() is not None:
            print(f"error: flower-superlink exited with status {child.returncode} before it listened on "
                  f"{address} (fix: read its log above)", file=sys.stderr, flush=True)
            return 1
        try:
            check_superlink_reachable(address, args.ca, timeout=2.0)
            break
        except DeployError as exc:
            if time.monotonic() > deadline:
                print(exc.line(), file=sys.stderr, flush=True)
                child.terminate()
                return 1
            time.sleep(0.25)
    print(f"superlink: ready on {args.host}:{args.port} (TLS on, SuperNode authentication on, "
          f"state in {args.database})", flush=True)
    try:
        return child.wait()
    finally:
        if child.poll() is None:  # interrupted: give Flower 10 s to stop, then stop it
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
