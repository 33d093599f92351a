"""DICOM over TLS: storescu with a client certificate from our CA gets in; others do not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series


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


def test_tls_requires_a_certificate_from_the_configured_ca(tmp_path, brain, pki):
    require_tool("storescu")
    tls = f"""
[node.tls]
certificate = "{pki / "node.pem"}"
private_key = "{pki / "node.key"}"
ca_certificates = "{pki / "hospital-ca.pem"}"
"""
    node = RunningNode(tmp_path / "node", free_port(), node_extra=tls).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=50, rows=64)[:2]
        trusted = [
            "+tls",
            str(pki / "scanner.key"),
            str(pki / "scanner.pem"),
            "+cf",
            str(pki / "hospital-ca.pem"),
        ]
        result = storescu(node.port, files, extra=trusted)
        assert result.stderr.count("Received Store Response (Success)") == 2
        stranger = [
            "+tls",
            str(pki / "stranger.key"),
            str(pki / "stranger.pem"),
            "+cf",
            str(pki / "hospital-ca.pem"),
        ]
        assert storescu(node.port, files, extra=stranger, check=False).returncode != 0
        assert storescu(node.port, files, check=False).returncode != 0  # plain TCP
        assert node.series()[0]["instances"] == 2
    finally:
        node.stop()
