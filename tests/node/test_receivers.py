"""Several receiver processes on one port (``receiver_processes``), against dcmtk's storescu."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _receiver_pids(node: RunningNode) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(node.process.pid), "-f", "dicomnode.receive.receivers"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(pid) for pid in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_parallel_series_complete_across_receiver_processes(tmp_path, brain):
    require_tool("storescu")
    node = RunningNode(tmp_path / "node", free_port(), node_extra="receiver_processes = 2").start()
    try:
        pids = _receiver_pids(node)
        assert len(pids) == 2
        groups = [write_lowfield_series(brain, tmp_path / f"s{i}", seed=30 + i) for i in range(4)]
        senders = [
            subprocess.Popen(
                ["storescu", "-aet", "SCANNER", "-aec", "IQTNODE", "127.0.0.1", str(node.port)]
                + [str(f) for f in files],
                env=ENV,
                stderr=subprocess.PIPE,
                text=True,
            )
            for files in groups
        ]
        for sender in senders:
            _, err = sender.communicate(timeout=120)
            assert sender.returncode == 0, err
        node.wait_for(
            lambda: sum(s["state"] == "complete" for s in node.series()) == 4,
            what="four complete series",
        )
        series = node.series()
        assert sorted(s["instances"] for s in series) == [30, 30, 30, 30]
        assert len(node.jobs()) == 4
        log = node.log_path.read_text()
        received_by = {line for line in log.splitlines() if '"association accepted"' in line}
        assert any('"receiver": 0' in line for line in received_by)
        assert any('"receiver": 1' in line for line in received_by)
    finally:
        node.stop()
    assert not any(_alive(pid) for pid in pids)


def test_receivers_die_with_a_killed_node_and_a_restart_gets_the_port(tmp_path, brain):
    node = RunningNode(tmp_path / "node", free_port(), node_extra="receiver_processes = 2").start()
    pids = _receiver_pids(node)
    assert len(pids) == 2
    files = write_lowfield_series(brain, tmp_path / "s", seed=40)
    assert storescu(node.port, files[:10]).stderr.count("Received Store Response (Success)") == 10
    node.kill()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
    with sqlite3.connect(node.data_dir / "dicomnode.sqlite3") as conn:
        assert conn.execute("select count(*) from instances").fetchone()[0] == 10
    node.start()
    try:
        storescu(node.port, files[10:])
        node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
        )
        assert node.series()[0]["instances"] == 30
    finally:
        node.stop()


def test_a_receiver_that_dies_is_replaced(tmp_path, brain):
    node = RunningNode(tmp_path / "node", free_port(), node_extra="receiver_processes = 2").start()
    try:
        first, second = _receiver_pids(node)
        os.kill(first, signal.SIGKILL)
        node.wait_for(
            lambda: len(_receiver_pids(node)) == 2 and first not in _receiver_pids(node),
            what="a replacement receiver",
        )
        assert "receiver process exited; restarting it" in node.log_path.read_text()
        files = write_lowfield_series(brain, tmp_path / "s", seed=41)
        storescu(node.port, files)
        node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
        )
    finally:
        node.stop()


def test_max_associations_holds_for_the_node_not_per_process(tmp_path):
    """Before, each of 2 processes took 4 of 8: a scanner was refused while the node held fewer
    than 8 whenever the kernel handed 5 connections to one process. Now all 8 are accepted
    whichever process takes them, the 9th is refused (transient, local limit exceeded), and a
    released association's slot is free at once."""
    from dicomnode.net.acse import ProposedContext
    from dicomnode.net.scu import AssociationError, StoreAssociation

    node = RunningNode(
        tmp_path / "node",
        free_port(),
        node_extra="receiver_processes = 2\nmax_associations = 8",
    ).start()
    verification = [ProposedContext(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))]

    def associate() -> StoreAssociation:
        return StoreAssociation.open(
            "127.0.0.1", node.port, "SCANNER", "IQTNODE", verification, 5, 5
        )

    held: list[StoreAssociation] = []
    try:
        held = [associate() for _ in range(8)]
        node.wait_for(
            lambda: node.log_path.read_text().count('"association accepted"') == 8,
            what="8 associations logged",
        )
        try:
            associate().release()
        except AssociationError as exc:
            assert "Rejected (Transient)" in str(exc) and "Local limit exceeded" in str(exc)
        else:
            raise AssertionError("a 9th association was accepted")
        held.pop().release()
        held.append(associate())
    finally:
        for association in held:
            association.release()
        node.stop()
