"""TLS contexts for the listener and the requestor (PS3.15 B.1 secure transport, TLS 1.2+)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None = None,
    require_client_certificate: bool = True,
) -> ssl.SSLContext:
    """With ``ca_certificates``, peers present a certificate from that CA (or may, when
    ``require_client_certificate`` is false)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(private_key))
    if ca_certificates:
        context.load_verify_locations(str(ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(
    certificate: Path, private_key: Path, ca_certificates: Path | None = None
) -> ssl.SSLContext:
    """The peer's certificate must come from ``ca_certificates`` (or the system's CAs); host
    names are not checked, since PACS certificates name AE hosts inconsistently."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if ca_certificates:
        context.load_verify_locations(str(ca_certificates))
    context.load_cert_chain(str(certificate), str(private_key))
    return context
