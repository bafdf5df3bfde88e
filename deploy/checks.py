"""Pre-flight checks for the deploy scripts: each failure is one line that names what is
wrong and how to fix it.

Flower's own start-up errors are multi-line, and some bad inputs make it retry forever
(a SuperNode that does not trust the SuperLink's certificate keeps reconnecting). So the
scripts in ``deploy/`` check everything they can before starting Flower, with a timeout on
every network step, and raise :class:`DeployError`.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "DeployError",
    "check_device",
    "check_node_key",
    "check_node_public_key",
    "check_port_free",
    "check_server_files",
    "check_superlink_reachable",
    "parse_address",
]


class DeployError(Exception):
    """A deployment input that cannot work, with the fix: printed as one line."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def line(self) -> str:
        return f"error: {self.problem} (fix: {self.fix})"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``.

    Raises:
        DeployError: if there is no port or it is out of range.
    """
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(
            f"SuperLink address {address!r} is not host:port",
            "give it as host:port, e.g. 10.0.0.5:9092 or [::1]:9092",
        )
    return host, int(port)


def _load_cert(path: Path, what: str, flag: str) -> x509.Certificate:
    if not path.is_file():
        raise DeployError(f"{what} {path} does not exist", f"pass the right file to {flag}")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise DeployError(
            f"{what} {path} is not a PEM certificate ({exc})",
            f"pass a PEM certificate to {flag}, e.g. one made by `python -m deploy.pki`",
        ) from exc


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime.datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise DeployError(
            f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            "issue a new one: python -m deploy.pki server --ca-dir <ca dir> --out <dir> --name <host>",
        )
    if now < cert.not_valid_before_utc:
        raise DeployError(
            f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check this machine's clock, or issue a certificate valid from now",
        )


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def _covers(names: set[str], host: str) -> bool:
    try:
        return str(ipaddress.ip_address(host)) in names
    except ValueError:
        return host.lower() in {n.lower() for n in names} or any(
            n.startswith("*.") and host.lower().endswith(n[1:].lower()) and host.count(".") == n.count(".")
            for n in names
        )


def check_server_files(
    ca_path: Path, cert_path: Path, key_path: Path, names: tuple[str, ...] = (),
    now: datetime.datetime | None = None,
) -> None:
    """The SuperLink's TLS files: present, parseable, in date, key matches, signed by the CA,
    and naming every host in ``names`` plus loopback (the SuperLink's own processes dial it).

    Raises:
        DeployError: on the first problem found.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca = _load_cert(ca_path, "CA certificate", "--ca")
    cert = _load_cert(cert_path, "server certificate", "--cert")
    if not key_path.is_file():
        raise DeployError(f"server key {key_path} does not exist", "pass the server's private key to --key")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(
            f"server key {key_path} is not an unencrypted PEM private key ({exc})",
            "pass the server.key made with server.crt (Flower cannot read encrypted keys)",
        ) from exc
    _check_validity(ca, ca_path, "CA certificate", now)
    _check_validity(cert, cert_path, "server certificate", now)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) or (
        key.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise DeployError(
            f"server key {key_path} does not match server certificate {cert_path}",
            "pass the key that was generated together with this certificate",
        )
    if not _verify_signed_by(cert, ca):
        raise DeployError(
            f"server certificate {cert_path} is not signed by CA {ca_path} "
            f"(issuer {cert.issuer.rfc4514_string()!r}, CA {ca.subject.rfc4514_string()!r})",
            "pass the CA that signed it, or re-issue it with python -m deploy.pki server --ca-dir <that CA>",
        )
    covered = _names(cert)
    for host in (*names, "127.0.0.1"):
        if host and host not in ("0.0.0.0", "::") and not _covers(covered, host):
            raise DeployError(
                f"server certificate {cert_path} does not name {host!r} (it names {', '.join(sorted(covered))})",
                f"re-issue it with python -m deploy.pki server ... --name {host}",
            )


def check_node_key(path: Path) -> None:
    """A SuperNode's private authentication key: present and ECDSA on a NIST curve (OpenSSH)."""
    if not path.is_file():
        raise DeployError(
            f"SuperNode key {path} does not exist",
            "make one with python -m deploy.pki node-key --out <path> and register its .pub",
        )
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(
            f"SuperNode key {path} is not an unencrypted OpenSSH private key ({exc})",
            "make one with python -m deploy.pki node-key (ECDSA P-384)",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(
            f"SuperNode key {path} is {type(key).__name__}, Flower needs ECDSA",
            "make one with python -m deploy.pki node-key (ECDSA P-384)",
        )


def check_node_public_key(path: Path) -> None:
    """A SuperNode's public key, before it is registered."""
    if not path.is_file():
        raise DeployError(f"public key {path} does not exist", "pass the .pub file made by deploy.pki node-key")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DeployError(
            f"public key {path} is not an OpenSSH public key ({exc})",
            "pass the .pub file made by python -m deploy.pki node-key",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError(
            f"public key {path} is {type(key).__name__}, Flower needs ECDSA on a NIST curve",
            "make one with python -m deploy.pki node-key (ECDSA P-384)",
        )


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Nothing listens on ``host:port`` yet (else Flower dies later, mid-start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a port whose old connections linger in TIME_WAIT
        # (a process just restarted) is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError as exc:
            raise DeployError(
                f"{what} cannot listen on {host}:{port}: {exc.strerror}",
                f"stop what uses the port or pick another with {flag}",
            ) from exc


def check_superlink_reachable(address: str, ca_path: Path, timeout: float = 10.0) -> None:
    """Connect to the SuperLink and complete a TLS handshake that trusts only ``ca_path``.

    Catches an unreachable SuperLink, a wrong CA, an expired certificate or one that does
    not name the host, all within ``timeout`` seconds.

    Raises:
        DeployError: naming the problem.
    """
    host, port = parse_address(address)
    _load_cert(ca_path, "CA certificate", "--ca")
    context = ssl.create_default_context(cafile=str(ca_path))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "expired" in reason:
            raise DeployError(
                f"the SuperLink at {address} presents an expired certificate",
                "the SuperLink's operator must issue a new server certificate (deploy.pki server)",
            ) from exc
        if "mismatch" in reason or "doesn't match" in reason:
            raise DeployError(
                f"the SuperLink's certificate does not name {host!r} ({reason})",
                f"dial the SuperLink by a name its certificate holds, or re-issue it with --name {host}",
            ) from exc
        raise DeployError(
            f"the SuperLink's certificate at {address} is not signed by CA {ca_path} ({reason})",
            "pass the federation's ca.crt (the CA that signed the SuperLink's server.crt) to --ca",
        ) from exc
    except ssl.SSLError as exc:
        raise DeployError(
            f"TLS handshake with {address} failed ({exc.reason or exc})",
            "check that the address is the SuperLink's and that it runs with TLS",
        ) from exc
    except TimeoutError as exc:
        raise DeployError(
            f"SuperLink {address} did not answer within {timeout:.0f} s",
            "check the address, that the SuperLink runs and that no firewall drops the port",
        ) from exc
    except OSError as exc:
        raise DeployError(
            f"SuperLink {address} is unreachable: {exc.strerror or exc}",
            "start the SuperLink first (python -m deploy.superlink) or correct --superlink host:port",
        ) from exc


def check_device(device: str) -> None:
    """``cpu`` or ``cuda:N`` that this machine has."""
    if device == "cpu":
        return
    index = device.removeprefix("cuda:")
    if not device.startswith("cuda:") or not index.isdigit():
        raise DeployError(f"device {device!r} is not cpu or cuda:N", "pass --device cpu or --device cuda:0")
    import torch  # only a GPU node pays for importing torch here

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index) >= count:
        raise DeployError(
            f"device {device} asked for, this machine has {count} CUDA device(s)",
            "pass --device cpu, or a cuda:N with N below the count nvidia-smi shows",
        )
