"""Cross-silo deployment (deploy/, docs/deployment.md): certificates and keys, every bad input
as one error line, and real federations on loopback — a real SuperLink and real SuperNodes as
separate processes, TLS on, SuperNode authentication on, runs submitted with `flwr run`."""

import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from deploy.checks import DeployError, check_node_key, check_server_files
from deploy.loopback import LoopbackFederation, free_port
from deploy.pki import make_ca, make_node_key, make_server_cert
from fedtune.config import load_config
from fedtune.zo.sync import run_key
from tests.conftest import REPO, SMALL_CONFIG, SMALL_LORA_CONFIG

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "HF_HUB_OFFLINE": "1",
}


def _deploy(module, *args, timeout=60):
    """Run ``python -m deploy.<module> ARGS`` as a user would; returns (result, seconds)."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", f"deploy.{module}", *map(str, args)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False,
    )
    return result, time.monotonic() - start


def _one_error_line(result):
    """The failure is exactly one stderr line `error: ... (fix: ...)` and a non-zero status."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "(fix: " in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a good server certificate, an expired one, one from another CA, node keys."""
    root = tmp_path_factory.mktemp("pki")
    make_ca(root / "ca")
    make_server_cert(root / "ca", root / "good")
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    make_server_cert(root / "ca", root / "expired", days=1, not_before=long_ago)
    make_ca(root / "other-ca")
    make_server_cert(root / "other-ca", root / "foreign")
    make_node_key(root / "keys" / "silo-0")
    return root


class _TlsServer:
    """A bare TLS endpoint (no Flower) serving ``cert``/``key``: what a SuperNode's pre-check dials.

    With ``silent``, it accepts TCP connections and never answers the TLS handshake.
    """

    def __init__(self, cert=None, key=None, silent=False):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.silent = silent
        self.context = None
        if not silent:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)
                continue
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


# --- certificates, keys and the checks ---------------------------------------------------


def test_the_pki_makes_files_the_checks_accept(pki):
    check_server_files(pki / "ca" / "ca.crt", pki / "good" / "server.crt", pki / "good" / "server.key")
    check_node_key(pki / "keys" / "silo-0")

    assert (pki / "keys" / "silo-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (pki / "keys" / "silo-0").stat().st_mode & 0o777 == 0o600  # private keys are not world-readable
    assert (pki / "good" / "server.key").stat().st_mode & 0o777 == 0o600


def test_check_server_files_names_each_problem(pki):
    ca, good, expired, foreign = pki / "ca" / "ca.crt", pki / "good", pki / "expired", pki / "foreign"

    with pytest.raises(DeployError, match="expired on"):
        check_server_files(ca, expired / "server.crt", expired / "server.key")
    with pytest.raises(DeployError, match="does not match server certificate"):
        check_server_files(ca, good / "server.crt", expired / "server.key")
    with pytest.raises(DeployError, match="is not signed by CA"):
        check_server_files(ca, foreign / "server.crt", foreign / "server.key")
    with pytest.raises(DeployError, match="does not name 'superlink.example.org'"):
        check_server_files(ca, good / "server.crt", good / "server.key", ("superlink.example.org",))
    with pytest.raises(DeployError, match="does not exist"):
        check_server_files(ca, good / "missing.crt", good / "server.key")


# --- bad input: one clear error line at start-up, never a hang ---------------------------


def test_superlink_refuses_an_expired_certificate(pki):
    result, _ = _deploy("superlink", "--ca", pki / "ca" / "ca.crt", "--cert", pki / "expired" / "server.crt",
                        "--key", pki / "expired" / "server.key", "--port", free_port())

    line = _one_error_line(result)
    assert "server certificate" in line and "expired on" in line and "deploy.pki server" in line


def test_superlink_refuses_a_key_that_does_not_match_the_certificate(pki):
    result, _ = _deploy("superlink", "--ca", pki / "ca" / "ca.crt", "--cert", pki / "good" / "server.crt",
                        "--key", pki / "foreign" / "server.key", "--port", free_port())

    assert "does not match server certificate" in _one_error_line(result)


def test_superlink_refuses_a_certificate_from_another_ca(pki):
    result, _ = _deploy("superlink", "--ca", pki / "ca" / "ca.crt", "--cert", pki / "foreign" / "server.crt",
                        "--key", pki / "foreign" / "server.key", "--port", free_port())

    assert "is not signed by CA" in _one_error_line(result)


def _supernode(pki, port, *extra, ca=None):
    return _deploy("supernode", "--superlink", f"127.0.0.1:{port}", "--ca", ca or pki / "ca" / "ca.crt",
                   "--key", pki / "keys" / "silo-0", "--partition-id", 0, "--num-partitions", 3,
                   "--runtime-port", free_port(), *extra)


def test_supernode_with_the_wrong_ca_is_told_so(pki):
    server = _TlsServer(pki / "good" / "server.crt", pki / "good" / "server.key")
    try:
        result, _ = _supernode(pki, server.port, ca=pki / "other-ca" / "ca.crt")
    finally:
        server.close()

    line = _one_error_line(result)
    assert "is not signed by CA" in line and "other-ca" in line and "--ca" in line


def test_supernode_facing_an_expired_certificate_is_told_so(pki):
    server = _TlsServer(pki / "expired" / "server.crt", pki / "expired" / "server.key")
    try:
        result, _ = _supernode(pki, server.port)
    finally:
        server.close()

    assert "presents an expired certificate" in _one_error_line(result)


def test_supernode_with_an_unreachable_superlink_stops_at_once(pki):
    result, seconds = _supernode(pki, free_port())  # nothing listens there

    line = _one_error_line(result)
    assert "is unreachable" in line and "start the SuperLink first" in line
    assert seconds < 30  # one connection attempt, not Flower's endless reconnecting


def test_supernode_facing_a_silent_endpoint_times_out(pki):
    server = _TlsServer(silent=True)  # the TCP handshake completes, TLS never does
    try:
        result, seconds = _supernode(pki, server.port, "--connect-timeout", 2)
    finally:
        server.close()

    assert "did not answer within 2 s" in _one_error_line(result)
    assert seconds < 30


def test_supernode_without_its_key_file_is_told_so(pki, tmp_path):
    result, _ = _deploy("supernode", "--superlink", "127.0.0.1:1", "--ca", pki / "ca" / "ca.crt",
                        "--key", tmp_path / "no-such-key", "--partition-id", 0, "--num-partitions", 3)

    assert "does not exist" in _one_error_line(result)


def test_register_without_a_connection_is_told_how_to_add_one(pki, tmp_path):
    env = {**ENV, "FLWR_HOME": str(tmp_path / "flwr-home")}

    result = subprocess.run(
        [sys.executable, "-m", "deploy.federation", "register", "--superlink", "fedtune",
         str(pki / "keys" / "silo-0.pub")], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )

    line = _one_error_line(result)
    assert "no SuperLink connection 'fedtune'" in line and "deploy.federation connect --name fedtune" in line


def test_pki_command_line_writes_a_key_pair(tmp_path):
    result, _ = _deploy("pki", "node-key", "--out", tmp_path / "silo-7", "--comment", "silo-7")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "silo-7"), str(tmp_path / "silo-7.pub")]
    check_node_key(tmp_path / "silo-7")
    assert (tmp_path / "silo-7.pub").read_text().rstrip().endswith(" silo-7")


# --- real federations on loopback --------------------------------------------------------

def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for_round(metrics, round_, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["round"] >= round_ for r in _records(metrics)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"round {round_} not in {metrics} after {timeout} s")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink and 3 SuperNodes on loopback, plus one key made but never registered."""
    workdir = tmp_path_factory.mktemp("federation")
    fed = LoopbackFederation(workdir, num_nodes=3, unregistered=1)
    fed.env["HF_HUB_OFFLINE"] = "1"
    try:
        fed.start()
        yield fed
    finally:
        fed.close()


@pytest.mark.slow
def test_the_superlink_serves_tls_and_requires_node_authentication(federation):
    log = federation.log("superlink").read_text()

    assert "superlink: ready" in log and "SuperNode authentication on" in log
    assert f"Uvicorn running on https://127.0.0.1:{federation.port}" in log  # TLS, not http://
    with socket.create_connection(("127.0.0.1", federation.port), timeout=5) as raw:  # plain HTTP is refused
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/1.1 200")
    for i in range(3):
        assert "supernode: connected as node ID" in federation.log(f"node-{i}").read_text()


@pytest.mark.slow
def test_a_supernode_whose_key_is_not_registered_is_refused(federation):
    unregistered = 3

    start = time.monotonic()
    proc = federation.start_node(unregistered)
    proc.wait(timeout=120)

    log = federation.log(f"node-{unregistered}").read_text()
    error_lines = [line for line in log.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and time.monotonic() - start < 120
    key = federation.keys[unregistered]
    expected = (
        f"error: the SuperLink at {federation.node_address} refused this SuperNode: key {key} is not "
        f"registered (fix: on the SuperLink's side run: flwr supernode register {key}.pub <connection>)"
    )
    assert error_lines == [expected]
    # ... and the SuperLink's log says why it refused.
    assert "No SuperNode found with the given public key" in federation.log("superlink").read_text()


@pytest.mark.slow
def test_fedkseed_survives_a_killed_supernode_and_a_restarted_one_catches_up(federation, tmp_path):
    config = tmp_path / "fedkseed.toml"
    # Node 2 can rejoin only once the SuperLink has seen its heartbeat lapse (2 x 30 s, fixed
    # in Flower 1.41), up to ~65 s after the kill; rounds 4-8 leave room for that on a fast or
    # a loaded machine (with 5 rounds, a quick run once ended before node 2 was back).
    rounds = 8
    config.write_text(SMALL_CONFIG.format(name="deployed", rounds=rounds, output_dir=tmp_path / "runs", num_clients=3,
                                          per_round=3, algorithm="fedkseed")
                      # a slow link (0.01 Mbit/s) makes the seed log the cheaper catch-up whatever
                      # replay speed the loaded machine measures: the test is about the log path
                      .replace("min_replies = 2", "min_replies = 2\nround_timeout_s = 45\nbandwidth_mbps = 0.01"))
    metrics = tmp_path / "runs" / "deployed" / "metrics.jsonl"

    run = federation.submit_async(config)
    try:
        _wait_for_round(metrics, 2, timeout=240)  # node 2 has confirmed state 1
        federation.kill_node(2)  # SIGKILL, mid-run: no goodbye to the SuperLink; its node state is gone
        shutil.rmtree(_cache_dir(federation, 2))  # ... and its disk: it restarts on a new machine
        _wait_for_round(metrics, 3, timeout=240)
        # Same key, so the same node ID; this time with Flower's own SuperExec (a new process
        # per message), so the run mixes warm-started and cold-started ClientApps.
        restarted_at = federation.log("node-2").stat().st_size
        federation.start_node(2, clientapp_start="cold")
        federation.wait_connected(2, timeout=120)
        run.wait(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()

    records = _records(metrics)
    run_log = federation.log("run").read_text()
    assert [r["round"] for r in records] == list(range(rounds + 1)), run_log[-3000:]
    assert records[1]["replies"] == records[2]["replies"] == 3
    assert records[3]["replies"] == 2 and records[3]["failed"] == 1  # the run went on without node 2
    # Back in round `back`: its fresh process holds state 0 where the server expects state 1
    # or later; it says so, the server replays the seed log to it, once, and it stays in.
    back = next((r["round"] for r in records[4:] if r["replies"] == 3), None)
    assert back is not None, f"node 2 never rejoined: {records[4:]}"
    assert [r["resynced"] for r in records[4:]] == [int(t == back) for t in range(4, rounds + 1)], run_log[-3000:]
    assert re.search(rf"holds state 0, the server {back - 1}: replaying the log", run_log)
    assert all(r["replies"] == 3 for r in records[back:])  # all three again
    assert all(r["sync_mismatches"] == 0 for r in records[1:])  # every party bit-identical
    # Each node's last ClientApp process left the weights it trained from (state rounds - 1)
    # on the node's disk for the next one (fedtune/client/node_cache.py).
    # Nodes 0 and 1 forked every ClientApp from their warm SuperExec (deploy/superexec.py), one
    # per message; node 2, restarted cold, started none that way.
    for i in range(2):
        forked = federation.log(f"node-{i}").read_text().count("ClientApp forked as process")
        assert forked >= rounds + 1, f"node {i}: {forked} forked ClientApps"  # the query and every round
    assert "ClientApp forked" not in federation.log("node-2").read_bytes()[restarted_at:].decode(errors="replace")
    key = run_key(load_config(config))
    for i in range(3):
        with safe_open(str(_cache_dir(federation, i) / f"{key}.safetensors"), "np") as f:
            assert f.metadata()["round"] == str(rounds - 1)


def _cache_dir(federation, i):
    return federation.workdir / f"flwr-home-node-{i}" / "fedtune-cache"


@pytest.mark.slow
def test_a_lora_run_completes_two_rounds(federation, tmp_path):
    config = tmp_path / "lora.toml"
    config.write_text(SMALL_LORA_CONFIG.format(name="lora", output_dir=tmp_path / "runs", num_clients=3,
                                               rule="lorafair", two_phase="true", method="none")
                      .replace("min_replies = 2", "min_replies = 2\nround_timeout_s = 120"))

    result = federation.submit(config, timeout=400)

    records = _records(tmp_path / "runs" / "lora" / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2], result.stdout[-3000:] + result.stderr[-3000:]
    # Two-phase LoRA-FAIR keeps each node's factors in Flower's node state between its two
    # messages: in deployment they are two separate ClientApp processes.
    assert all(r["replies"] == r["sampled"] == 3 and r["failed"] == 0 for r in records[1:])
    assert (tmp_path / "runs" / "lora" / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["offsite", "split-prompt"])
def test_a_run_for_devices_smaller_than_the_model_completes_two_rounds(federation, tmp_path, algorithm):
    # Offsite: each node's ClientApp process builds the emulator; split-prompt: a fresh
    # ClientApp process per split step, nothing kept between them but the message
    config = tmp_path / f"{algorithm}.toml"
    config.write_text(SMALL_LORA_CONFIG.format(name=algorithm, output_dir=tmp_path / "runs", num_clients=3,
                                               rule=algorithm, two_phase="false", method="none")
                      .replace('config = "micro-bert"', 'config = "micro-bert-6"\nhead = "label-names"')
                      .replace("min_replies = 2", "min_replies = 2\nround_timeout_s = 120"))

    result = federation.submit(config, timeout=400)

    records = _records(tmp_path / "runs" / algorithm / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2], result.stdout[-3000:] + result.stderr[-3000:]
    assert all(r["replies"] == r["sampled"] == 3 and r["failed"] == 0 for r in records[1:])
    if algorithm == "offsite":
        assert all("emulator_eval_accuracy" in r for r in records)


def test_deploy_scripts_are_where_the_docs_say(tmp_path):
    doc = (REPO / "docs" / "deployment.md").read_text()
    modules = sorted(p.stem for p in (REPO / "deploy").glob("*.py") if p.stem != "__init__")

    assert modules == ["checks", "federation", "loopback", "pki", "superexec", "superlink", "supernode"]
    for module in ("pki", "superlink", "supernode", "superexec", "federation", "loopback"):
        assert f"python -m deploy.{module}" in doc, module
    assert Path(REPO / "README.md").read_text().count("docs/deployment.md") >= 1
