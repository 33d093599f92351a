"""DICOM over TLS: storescu with a client certificate from our CA gets in; others do not."""

from __future__ import annotations

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series
from tests.pki import node_tls_section


def test_tls_requires_a_certificate_from_the_configured_ca(tmp_path, brain, pki):
    require_tool("storescu")
    tls = node_tls_section(pki)
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
