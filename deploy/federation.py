"""The submitting side: name the SuperLink for Flower's CLI, and register SuperNode keys.

    python -m deploy.federation connect --name fedtune --address superlink.example.org:8000 --ca certs/ca.crt
    python -m deploy.federation register --superlink fedtune keys/silo-0.pub
    flwr run . fedtune --run-config 'config="simulations/default.toml"' --stream

``connect`` checks that the SuperLink answers with a certificate the CA vouches for, then
writes ``[superlink.NAME]`` (address, root-certificates) into ``$FLWR_HOME/config.toml``
(default ``~/.flwr``), keeping every other entry. ``register`` checks the public key and
runs ``flwr supernode register``. Both fail with one line ``error: ... (fix: ...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import tomli_w
import tomllib

from deploy.checks import DeployError, check_node_public_key, check_superlink_reachable
from deploy.superlink import FLOWER_ENV

__all__ = ["flwr_home", "main", "register", "write_connection"]


def flwr_home() -> Path:
    """Flower's home: ``$FLWR_HOME``, else ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser()


def write_connection(name: str, address: str, ca: Path, home: Path | None = None) -> Path:
    """Add or replace ``[superlink.NAME]`` in ``config.toml`` under ``home``. Returns the file."""
    path = (home or flwr_home()) / "config.toml"
    config = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlinks = config.setdefault("superlink", {})
    superlinks.setdefault("default", "local")  # `flwr run .` alone keeps meaning simulation
    superlinks.setdefault("local", {"address": ":local:"})
    superlinks[name] = {"address": address, "root-certificates": str(ca.resolve())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def _connection(name: str) -> tuple[str, Path]:
    path = flwr_home() / "config.toml"
    entry = tomllib.loads(path.read_text()).get("superlink", {}).get(name) if path.is_file() else None
    if not isinstance(entry, dict) or "address" not in entry:
        raise DeployError(
            f"no SuperLink connection {name!r} in {path}",
            f"add it: python -m deploy.federation connect --name {name} --address HOST:PORT --ca ca.crt",
        )
    if "root-certificates" not in entry:
        raise DeployError(
            f"connection {name!r} in {path} has no root-certificates: TLS cannot be verified",
            f"re-run python -m deploy.federation connect --name {name} ... --ca ca.crt",
        )
    return entry["address"], Path(entry["root-certificates"])


def register(public_key: Path, superlink: str, timeout: float = 60.0) -> int:
    """Register ``public_key`` with the SuperLink of connection ``superlink``; returns the node ID.

    Raises:
        DeployError: bad key, unknown connection, unreachable SuperLink, or Flower refused.
    """
    check_node_public_key(public_key)
    address, ca = _connection(superlink)
    check_superlink_reachable(address, ca)
    try:
        result = subprocess.run(
            ["flwr", "supernode", "register", str(public_key), superlink, "--format", "json"],
            env={**os.environ, **FLOWER_ENV}, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"flwr supernode register did not finish in {timeout:.0f} s", "check the SuperLink's log") from exc
    try:
        answer = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError:
        answer = {}
    if result.returncode != 0 or not answer.get("success"):
        detail = (answer.get("error-message") or result.stderr or result.stdout).strip().splitlines()
        raise DeployError(
            f"the SuperLink did not register {public_key}: {detail[-1] if detail else 'no reason given'}",
            "a key can be registered once; `flwr supernode ls` shows the registered nodes",
        )
    return int(answer["node-id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.federation", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    connect = sub.add_parser("connect", help="write the SuperLink connection into $FLWR_HOME/config.toml")
    connect.add_argument("--name", required=True, help="connection name, used as `flwr run . NAME`")
    connect.add_argument("--address", required=True, help="the SuperLink as host:port")
    connect.add_argument("--ca", type=Path, required=True, help="the federation's ca.crt")
    connect.add_argument("--timeout", type=float, default=10.0)
    reg = sub.add_parser("register", help="register a SuperNode's public key with the SuperLink")
    reg.add_argument("public_key", type=Path, nargs="+", help="the silo's .pub file(s)")
    reg.add_argument("--superlink", required=True, help="connection name written by `connect`")
    args = parser.parse_args(argv)
    try:
        if args.command == "connect":
            check_superlink_reachable(args.address, args.ca, timeout=args.timeout)
            path = write_connection(args.name, args.address, args.ca)
            print(f"connection {args.name!r} -> {args.address} written to {path}")
        else:
            for key in args.public_key:
                print(f"registered {key}: node ID {register(key, args.superlink)}")
    except DeployError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
