"""Certificates and SuperNode keys for a cross-silo federation, made with ``cryptography``.

    python -m deploy.pki ca --out certs                       # ca.crt, ca.key (keep ca.key offline)
    python -m deploy.pki server --ca-dir certs --out certs --name superlink.example.org
    python -m deploy.pki node-key --out keys/silo-0           # keys/silo-0 (private), keys/silo-0.pub

The SuperLink serves TLS with ``server.crt``/``server.key`` signed by the federation's CA;
every SuperNode verifies it with ``ca.crt``. Flower 1.41 has no client certificates (no
mutual TLS): a SuperNode proves who it is with an ECDSA P-384 key pair, whose public half the
SuperLink's operator registers (``flwr supernode register``). Each silo makes its own key
and sends only the ``.pub`` file; the private key never leaves the silo.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "LOOPBACK_NAMES",
    "SERVER_CERT",
    "SERVER_KEY",
    "make_ca",
    "make_node_key",
    "make_server_cert",
]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
# The SuperLink's own processes (SuperExec, ServerApp) reach it on loopback, so its
# certificate must name loopback too, whatever public name the SuperNodes use.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:  # created 0600, never world-readable even for an instant
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(out: Path, *, days: int = 3650, common_name: str = "fedtune federation CA") -> tuple[Path, Path]:
    """Create a self-signed CA (ECDSA P-384). Returns ``(ca.crt, ca.key)`` under ``out``."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(key_path, _pem_key(key), private=True)
    return cert_path, key_path


def make_server_cert(
    ca_dir: Path,
    out: Path,
    names: Sequence[str] = (),
    *,
    days: int = 825,
    not_before: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a TLS server certificate for the SuperLink with the CA in ``ca_dir``.

    Args:
        ca_dir: holds ``ca.crt`` and ``ca.key``.
        out: where ``server.crt`` and ``server.key`` go.
        names: DNS names or IP addresses SuperNodes use to reach the SuperLink; loopback
            names are always added (the SuperLink's own processes connect there).
        days: validity from ``not_before``.
        not_before: start of validity (default: now, minus 5 minutes of clock skew).

    Returns:
        ``(server.crt, server.key)``.
    """
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca_dir / CA_KEY}: expected an EC private key, got {type(ca_key).__name__}")
    key = ec.generate_private_key(ec.SECP384R1())
    all_names = list(dict.fromkeys([*names, *LOOPBACK_NAMES]))  # ordered, no duplicates
    start = not_before if not_before is not None else _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in all_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    cert_path, key_path = out / SERVER_CERT, out / SERVER_KEY
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(key_path, _pem_key(key), private=True)
    return cert_path, key_path


def make_node_key(path: Path, comment: str = "") -> tuple[Path, Path]:
    """Create a SuperNode authentication key pair: ECDSA P-384 in OpenSSH format.

    ``path`` gets the private key (mode 0600), ``path.pub`` the public key to register.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub_path = path.with_name(path.name + ".pub")
    _write(path, private, private=True)
    _write(pub_path, public + (f" {comment}".encode() if comment else b"") + b"\n", private=False)
    return path, pub_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.pki", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="create the federation's CA (ca.crt, ca.key)")
    ca.add_argument("--out", type=Path, required=True, help="directory for ca.crt and ca.key")
    ca.add_argument("--days", type=int, default=3650)
    server = sub.add_parser("server", help="sign the SuperLink's TLS certificate (server.crt, server.key)")
    server.add_argument("--ca-dir", type=Path, required=True, help="directory holding ca.crt and ca.key")
    server.add_argument("--out", type=Path, required=True, help="directory for server.crt and server.key")
    server.add_argument(
        "--name", action="append", default=[],
        help="DNS name or IP SuperNodes dial (repeatable); loopback is always included",
    )
    server.add_argument("--days", type=int, default=825)
    node = sub.add_parser("node-key", help="create a SuperNode key pair (PATH and PATH.pub)")
    node.add_argument("--out", type=Path, required=True, help="path of the private key; .pub is added")
    node.add_argument("--comment", default="", help="comment appended to the public key (e.g. the silo)")
    args = parser.parse_args(argv)

    try:
        if args.command == "ca":
            paths = make_ca(args.out, days=args.days)
        elif args.command == "server":
            paths = make_server_cert(args.ca_dir, args.out, args.name, days=args.days)
        else:
            paths = make_node_key(args.out, args.comment)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc} (fix: check the paths and that the CA was made with `deploy.pki ca`)",
              file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
