"""A throw-away PKI for TLS tests: a hospital CA, another CA, and certificates signed by each."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )


def _signed(folder: Path, ca: str, name: str, san: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    require_tool("openssl")
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "hospital-ca")
    _ca(folder, "other-ca")
    _signed(folder, "hospital-ca", "node", "IP:127.0.0.1,DNS:localhost")
    _signed(folder, "hospital-ca", "scanner", "DNS:scanner")
    _signed(folder, "other-ca", "stranger", "DNS:stranger")
    return folder


def node_tls_section(pki: Path) -> str:
    """The ``[node.tls]`` config of a node serving the PKI's node certificate, trusting its CA."""
    return f"""
[node.tls]
certificate = "{pki / "node.pem"}"
private_key = "{pki / "node.key"}"
ca_certificates = "{pki / "hospital-ca.pem"}"
"""
