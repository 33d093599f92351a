"""The single-machine default is unchanged by the cluster roles and needs no broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicomnode.config import ConfigError, parse_config
from tests.node.helpers import BIN


def test_the_default_node_runs_its_jobs_in_process_and_never_loads_celery(tmp_path):
    code = f"""
import sys
from dicomnode.config import parse_config
from dicomnode.node import Node
config = parse_config({{"node": {{"data_dir": "{tmp_path}", "receiver_processes": 1}}}})
node = Node(config)
assert node.runner is not None and node.reconciler is None
assert not [m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "amqp")]
node.database.dispose()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_cluster_needs_postgresql():
    with pytest.raises(ConfigError, match="database_url"):
        parse_config({"cluster": {"enabled": True}})
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        parse_config(
            {
                "node": {"database_url": "postgresql+psycopg://x@127.0.0.1/db"},
                "cluster": {"enabled": True, "lease_seconds": 10, "heartbeat_seconds": 6},
            }
        )


def test_worker_refuses_without_a_cluster(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path}"\n')
    result = subprocess.run(
        [str(BIN), "worker", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "[cluster] enabled is false" in result.stderr
