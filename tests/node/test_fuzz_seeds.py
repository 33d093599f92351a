"""Regression cases of the wire fuzzer: every seed in ``fuzz_seeds/`` replayed on every run.

A seed is a JSON file: a case the node once misanswered (issue 14's defects, or one that
``test_fuzz_wire`` found and wrote out), with ``defect`` saying what went wrong. Its bytes are
either stored (``steps``, hex), rebuilt by a named builder of ``wirefuzz`` (``build`` and
``args``: the large ones, a deflate bomb, an oversized dataset), or regenerated from the fuzzer
(``fuzz``: [seed, index]). ``kind = "idle"`` seeds open idle connections instead.

Each case runs against one node (``wirefuzz.start_fuzz_node``: 2 s / 2.5 s deadlines,
max_associations 8, max_pending_connections 16, max_dataset_mb 8, 127.0.0.2 refused) and must
get the answer its oracle names, with the node's processes growing by no more than the seed's
``memory_mib`` (default 96), and a refused instance never stored. To add a seed, copy a file
that test_fuzz_wire wrote to its findings folder here, under a name that says what it is.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset

from tests.conftest import free_port, require_tool
from tests.node import wirefuzz
from tests.node.helpers import storescu

SEEDS = Path(__file__).with_name("fuzz_seeds")
DEFAULT_MEMORY_MIB = 96
ALL = wirefuzz.load_seeds(SEEDS)
WIRE = [(name, spec) for name, spec in ALL if spec.get("kind", "case") == "case"]
IDLE = [(name, spec) for name, spec in ALL if spec.get("kind") == "idle"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_tool("storescu")
    require_tool("echoscu")
    running = wirefuzz.start_fuzz_node(tmp_path_factory.mktemp("seeds") / "node", free_port())
    yield running
    running.stop()


def _alive(node) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    if node.process.poll() is not None:
        problems.append(f"the node exited with {node.process.returncode}")
    errors = wirefuzz.unexpected_errors(node.log_path.read_text(errors="replace"))
    if errors:
        problems.append(f"unexpected errors logged: {errors[-1][:600]}")
    return problems


def test_seeds_are_readable():
    assert WIRE and IDLE
    for name, spec in ALL:
        assert spec.get("defect"), f"{name}: say what went wrong"
        if spec.get("kind", "case") == "case":
            wirefuzz.case_from_json(name, spec)


@pytest.mark.parametrize("name,spec", WIRE, ids=[name for name, _ in WIRE])
def test_wire_seed(node, name, spec):
    case = wirefuzz.case_from_json(name, spec)
    watch = wirefuzz.MemoryWatch(node.process.pid).start()
    outcome = wirefuzz.run_case(node.port, case, wirefuzz.TIMEOUTS)
    watch.stop()
    problems = list(outcome.violations)
    if outcome.verdict in ("no-association", "connect-failed"):
        problems.append(f"inconclusive: {outcome.detail}")
    bound = spec.get("memory_mib", DEFAULT_MEMORY_MIB)
    for pid, growth in watch.growth_mib().items():
        if growth > bound:
            problems.append(f"pid {pid} grew by {growth:.0f} MiB (bound {bound})")
    refusing = case.oracle in ("not-success", "failure-status") and case.statuses != (
        wirefuzz.SUCCESS,
    )
    if refusing and case.sop_instance:
        if case.sop_instance.decode("latin-1") in wirefuzz.stored_instances(node.data_dir):
            problems.append("the refused instance was stored")
    problems += _alive(node)
    print(f"{outcome.describe()}; memory: {watch.report()}")
    assert not problems, (
        f"{spec['defect']}\n{outcome.describe()}\nmemory: {watch.report()}\n" + "\n".join(problems)
    )


def _part10_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        sop = wirefuzz.uid_for("idle-seed", folder.name, number, time.time())
        ds = wirefuzz.mr_dataset(sop)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = wirefuzz.EXPLICIT_LE.decode()
        path = folder / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name,spec", IDLE, ids=[name for name, _ in IDLE])
def test_idle_seed(node, name, spec, tmp_path):
    """Idle connections hold no association slot, cost a bounded number of threads, and are
    let go at ``association_request_timeout_seconds``; a scanner still gets in meanwhile."""
    files = _part10_files(tmp_path / "files", 2)
    watch = wirefuzz.MemoryWatch(node.process.pid).start()
    wires = []
    for _ in range(spec["connections"]):
        wires.append(wirefuzz.Wire(node.port, spec.get("source")))
    first = wires[0].connected_at
    time.sleep(0.3)  # accepted by now
    problems = []
    if spec.get("store_during"):
        result = storescu(node.port, files, extra=["--no-halt"], check=False)
        text = result.stderr + result.stdout
        if result.returncode != 0 or text.count("Received Store Response (Success)") != 2:
            problems.append(
                f"a scanner could not store with {len(wires)} idle connections open: {text[-600:]}"
            )
    deadline = first + wirefuzz.TIMEOUTS.association_request + wirefuzz.SLACK_SECONDS
    held = 0
    for wire in wires:
        wire.wait(deadline, 0, lambda kinds: any(k in wirefuzz.TERMINAL_TYPES for k in kinds))
        replies = [kind for _, kind, _ in wire.pdus]
        if not wire.closed and not any(k in wirefuzz.TERMINAL_TYPES for k in replies):
            held += 1
        if wire.garbled or any(k not in wirefuzz.TERMINAL_TYPES for k in replies):
            problems.append(f"an idle connection got {replies} {wire.garbled or ''}")
        wire.close()
    watch.stop()
    if held:
        problems.append(f"{held} of {len(wires)} idle connections still open at the deadline")
    if spec.get("thread_bound"):
        bound = wirefuzz.MAX_PENDING + wirefuzz.MAX_ASSOCIATIONS
        growth = sum(watch.thread_growth().values())
        if growth > bound:
            problems.append(
                f"{growth} threads more for {len(wires)} idle connections (bound {bound})"
            )
    if not spec.get("store_during"):  # afterwards, at least
        result = storescu(node.port, files, extra=["--no-halt"], check=False)
        if result.returncode != 0:
            problems.append(
                f"a scanner could not store after the idle connections: {result.stderr}"
            )
    problems += _alive(node)
    assert not problems, f"{spec['defect']}\nmemory: {watch.report()}\n" + "\n".join(problems)


def test_node_still_answers_echo(node):
    result = wirefuzz.echo(node.port)
    assert "Received Echo Response (Success)" in result.stderr + result.stdout, result.stderr
    assert not _alive(node)
