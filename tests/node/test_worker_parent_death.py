"""A worker process does not outlive the node: killing only the node's main process (an
operator's ``kill -9``, an OOM kill) ends its model process too, even mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import multiprocessing, os, sys, time
from dicomnode.process.worker import _exit_with_parent

def busy_model_run():
    _exit_with_parent(os.getppid())
    time.sleep(300)  # a long job, never back at the pipe

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=busy_model_run)
    child.start()
    print(child.pid, flush=True)
    child.join()
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_the_model_process_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(SCRIPT)
    node = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        child = int(node.stdout.readline())
        time.sleep(1.0)
        assert _running(child), "the model process should run while its parent lives"
        os.kill(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(child), "the model process outlived the node"
    finally:
        node.kill()
        if "child" in locals() and _running(child):
            os.kill(child, signal.SIGKILL)
