"""AE titles the configuration accepts are ones that can work on the wire, and a destination's
``tls`` table refuses the listener-only ``require_client_certificate``.

Before, the AE title check let through non-ASCII characters (our encoder then failed on every
association), DEL, and leading or trailing spaces (peers strip the padding, so the title could
never match), and ``[[destinations]] tls.require_client_certificate`` was accepted and did
nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicomnode.config import ConfigError, parse_config, validate_ae_title
from tests.node.helpers import BIN

VALID = ["IQTNODE", "A", "X" * 16, "MY NODE", "LF-01_mr.2", "~!@#$%^&*()[]{}"]
INVALID = {
    "": "must not be empty",
    "X" * 17: "at most 16",
    " IQTNODE": "leading or trailing spaces",
    "IQTNODE ": "leading or trailing spaces",
    "   ": "leading or trailing spaces",
    "IQT\\NODE": "backslash",
    "IQT\tNODE": "control character 0x09",
    "IQT\x7fNODE": "control character 0x7F",
    "IQT\x00": "control character 0x00",
    "KNÖDE": "non-ASCII",
    "ノード": "non-ASCII",
}


def _destination(ae_title: str = "PACS", **extra: object) -> dict[str, object]:
    return {"name": "pacs", "ae_title": ae_title, "host": "127.0.0.1", "port": 104, **extra}


@pytest.mark.parametrize("title", VALID)
def test_valid_titles_are_kept_as_written(title):
    config = parse_config(
        {
            "node": {"ae_title": title, "accept": {"calling_ae_titles": [title]}},
            "destinations": [_destination(title)],
        }
    )
    assert config.node.ae_title == title
    assert config.node.accept.calling_ae_titles == [title]
    assert config.destinations[0].ae_title == title


@pytest.mark.parametrize("title", list(INVALID), ids=[repr(t) for t in INVALID])
@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("node", "node.ae_title"),
        ("destination", "destinations.0.ae_title"),
        ("accept", "node.accept.calling_ae_titles.1"),
    ],
)
def test_invalid_titles_are_refused_naming_the_key(title, where, key):
    data: dict[str, object] = {
        "node": {"ae_title": title} if where == "node" else {},
        "destinations": [_destination(title if where == "destination" else "PACS")],
    }
    if where == "accept":
        data["node"] = {"accept": {"calling_ae_titles": ["SCANNER", title]}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = dict(caught.value.problems)
    assert list(problems) == [key]
    assert INVALID[title] in problems[key]
    assert "AE title" in problems[key]


@pytest.mark.parametrize("title", list(INVALID), ids=[repr(t) for t in INVALID])
def test_the_validator_is_the_one_the_cli_uses(title):
    with pytest.raises(ValueError, match="AE title"):
        validate_ae_title(title)


def test_config_check_names_the_key_of_a_padded_title(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nae_title = "IQTNODE "\n[node.accept]\ncalling_ae_titles = ["LF\\\\01"]\n'
    )
    result = subprocess.run(
        [str(BIN), "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "node.ae_title: AE title 'IQTNODE ' has leading or trailing spaces" in result.stderr
    assert "node.accept.calling_ae_titles.0: AE title" in result.stderr
    assert "backslash" in result.stderr


# --- a destination's TLS ------------------------------------------------------------------------
def _pem(tmp_path: Path) -> dict[str, str]:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not checked here\n")
    return {"certificate": str(tmp_path / "cert.pem"), "private_key": str(tmp_path / "key.pem")}


@pytest.mark.parametrize("value", [True, False])
def test_require_client_certificate_is_refused_for_a_destination(tmp_path, value):
    tls = {**_pem(tmp_path), "require_client_certificate": value}
    with pytest.raises(ConfigError) as caught:
        parse_config({"destinations": [_destination(tls=tls)]})
    ((key, message),) = caught.value.problems
    assert key == "destinations.0.tls"
    assert message.startswith("require_client_certificate:")
    assert "[node.tls]" in message


def test_a_destination_tls_without_it_and_the_listener_with_it_are_fine(tmp_path):
    pem = _pem(tmp_path)
    config = parse_config(
        {
            "node": {"tls": {**pem, "require_client_certificate": False}},
            "destinations": [_destination(tls=pem)],
        }
    )
    assert config.node.tls is not None and config.node.tls.require_client_certificate is False
    assert config.destinations[0].tls is not None
