"""Configuration validation (through the real CLI) and the routing pattern language."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicomnode.config import ConfigError, parse_config
from dicomnode.receive.routing import route
from tests.node.helpers import BIN

GOOD = """
[node]
ae_title = "IQTNODE"
port = 11112
data_dir = "/tmp/x"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242

[[rules]]
name = "lowfield-t1"
match = { Modality = "MR", MagneticFieldStrength = "<1.0", SeriesDescription = "(?i)t1" }
action = "enhance"
destinations = ["pacs"]
"""


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return subprocess.run([str(BIN), "config", "check", str(path)], capture_output=True, text=True)


def test_config_check_accepts_the_design_example(tmp_path):
    result = _check(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_config_check_names_every_bad_key(tmp_path):
    bad = (
        GOOD.replace("port = 11112", "port = 70000")
        .replace('destinations = ["pacs"]', 'destinations = ["archive"]')
        .replace('ae_title = "PACS"', 'ae_title = "THIS_TITLE_IS_TOO_LONG"\ncolour = "blue"')
    )
    result = _check(tmp_path, bad)
    assert result.returncode == 1
    assert "node.port:" in result.stderr
    assert "destinations.0.ae_title:" in result.stderr
    assert "destinations.0.colour: unknown key" in result.stderr


def test_unknown_destination_in_rule_is_named(tmp_path):
    result = _check(tmp_path, GOOD.replace('destinations = ["pacs"]', 'destinations = ["archive"]'))
    assert result.returncode == 1
    assert "rules.0.destinations" in result.stderr and "archive" in result.stderr


def test_bad_regex_and_keyword_are_refused():
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"rules": [{"name": "r", "action": "forward", "match": {"SeriesDescription": "(t1"}}]}
        )
    assert "rules.0.match" in str(info.value) and "regular expression" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"rules": [{"name": "r", "action": "forward", "match": {"Modalty": "MR"}}]})
    assert "not a DICOM attribute keyword" in str(info.value)


def test_syntax_error_is_reported(tmp_path):
    result = _check(tmp_path, "[node\nport = 1")
    assert result.returncode == 1 and "(syntax)" in result.stderr


def _rules(*rules: dict) -> list:
    return parse_config({"rules": list(rules)}).rules


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("<1.0", "0.36", True),
        ("<1.0", "1.5", False),
        (">=0.064", "0.064", True),
        ("(?i)t1", "Ax T1 SE", True),
        ("(?i)t1", "T2 FSE", False),
        ("MR", "MR", True),
        ("MR", "MRS", False),
        ("!DERIVED", ["ORIGINAL", "PRIMARY"], True),
        ("!DERIVED", ["DERIVED", "SECONDARY"], False),
        ("^ORIGINAL\\\\PRIMARY", ["ORIGINAL", "PRIMARY", "M"], True),
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4", True),
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", False),
        ("<1.0", None, False),
    ],
)
def test_pattern_language(pattern, value, expected):
    key = "ImageType" if isinstance(value, list) else "SeriesDescription"
    rules = _rules({"name": "r", "action": "forward", "match": {key: pattern}})
    attributes = {key: value} if value is not None else {}
    assert route(rules, attributes).ignored is not expected


def test_first_matching_rule_wins_and_calling_ae_matches():
    rules = _rules(
        {"name": "a", "action": "enhance", "match": {"CallingAETitle": "LF01", "Modality": "MR"}},
        {"name": "b", "action": "forward", "match": {"Modality": "MR"}},
    )
    assert route(rules, {"Modality": "MR", "CallingAETitle": "LF01"}).rule == "a"
    assert route(rules, {"Modality": "MR", "CallingAETitle": "CT01"}).rule == "b"
    assert route(rules, {"Modality": "CT", "CallingAETitle": "LF01"}).ignored


def test_list_pattern_needs_every_item():
    rules = _rules(
        {"name": "a", "action": "enhance", "match": {"ImageType": ["ORIGINAL", "PRIMARY"]}}
    )
    assert not route(rules, {"ImageType": ["ORIGINAL", "PRIMARY", "M"]}).ignored
    assert route(rules, {"ImageType": ["ORIGINAL", "SECONDARY"]}).ignored


def test_shipped_example_configuration_is_valid():
    example = Path(__file__).resolve().parents[2] / "examples" / "dicomnode.toml"
    result = subprocess.run([str(BIN), "config", "check", str(example)], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_runner_and_pipeline_problems_are_named_by_key():
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "runner": {"gpu": "sometimes", "below_threshold": "shout"},
                "pipeline": {"n4": {"shrink_in_plane": 0}},
                "rules": [
                    {"name": "r", "action": "enhance", "when_no_model": "guess", "match": {}}
                ],
            }
        )
    text = str(info.value)
    for key in ("runner.gpu", "runner.below_threshold", "pipeline", "n4.shrink_in_plane"):
        assert key in text, text
    assert "rules.0.when_no_model" in text
    config = parse_config({"runner": {"output_format": "mr", "consistency_threshold_db": 22}})
    from dicomnode.process.runner import runner_pipeline_settings

    settings = runner_pipeline_settings(config)
    assert settings.output.format == "mr" and settings.output.review_below_db == 22
