"""A bounded wire fuzzer against a running node, with good series sent alongside (issue 14, D).

For ``DICOMNODE_FUZZ_SECONDS`` (default 60) a few threads play cases of ``wirefuzz.make_case``
against ``dicomnode serve`` on 127.0.0.1: mutated A-ASSOCIATE-RQs (lengths, item types, protocol
versions, non-ASCII and over-long UIDs, truncation), P-DATA-TF (fragment lengths, control headers,
contexts), command sets with wrong or missing elements, datasets with bad lengths, VRs and
encodings, deflated garbage, oversized datasets, and slow and idle peers. Meanwhile dcmtk's
storescu sends ``GOOD_SERIES`` good series. Then:

- the node never crashed: its process and its receiver processes are the ones it started with,
  no handler failed unexpectedly, and echoscu still gets C-ECHO;
- no process of the node grew by more than ``DICOMNODE_FUZZ_RSS_MB`` (default 128) MiB;
- every good series arrived complete;
- every case ended with a DICOM reply (A-ASSOCIATE-AC/RJ, A-ABORT, A-RELEASE-RP, P-DATA with a
  status) or with the node closing at its documented deadline; never a bare close, never held
  past the deadline; known-bad stores never answered Success (``wirefuzz`` has the verdicts).

Reproduce one case: ``wirefuzz.run_case(port, wirefuzz.make_case(seed, index), TIMEOUTS)``; the
seed is ``DICOMNODE_FUZZ_SEED`` (default 14). Failing cases are written as JSON seeds to
``DICOMNODE_FUZZ_FINDINGS`` (default: the test's temporary folder) for ``fuzz_seeds/``.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import free_port, require_tool
from tests.node import wirefuzz
from tests.node.helpers import storescu
from tests.node.series_files import write_lowfield_series

FUZZ_SECONDS = float(os.environ.get("DICOMNODE_FUZZ_SECONDS", "60"))
FUZZ_SEED = int(os.environ.get("DICOMNODE_FUZZ_SEED", "14"))
RSS_BUDGET_MIB = float(os.environ.get("DICOMNODE_FUZZ_RSS_MB", "128"))
WORKERS = 3  # with storescu, well under max_associations (8) and max_pending (16)
GOOD_SERIES = 3
SERIES_INSTANCES = 30
# More inconclusive cases than this (the standard association refused under the limit) fail.
INCONCLUSIVE_SHARE = 0.02


@pytest.fixture
def node(tmp_path: Path):
    require_tool("storescu")
    require_tool("echoscu")
    running = wirefuzz.start_fuzz_node(tmp_path / "node", free_port())
    yield running
    running.stop()


def _series_state(data_dir: Path, series_uid: str) -> tuple[str, int, int] | None:
    with sqlite3.connect(data_dir / "dicomnode.sqlite3") as conn:
        row = conn.execute(
            "select s.state, s.instances, count(i.id) from series s "
            "left join instances i on i.series_id = s.id where s.series_uid = ? group by s.id",
            (series_uid,),
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


def test_wire_fuzz_with_good_series_alongside(node, brain, tmp_path):
    series = []
    for number in range(GOOD_SERIES):
        files = write_lowfield_series(brain, tmp_path / f"good{number}", seed=400 + number, rows=64)
        series.append((pydicom.dcmread(files[0]).SeriesInstanceUID, files))
    root = node.process.pid
    receivers = sorted(wirefuzz.receiver_pids(root))
    # warm up (imports on first use) before the memory baseline
    for index in range(4):
        case = wirefuzz.valid_store(random.Random(index), f"warm:{index}")
        wirefuzz.run_case(node.port, case, wirefuzz.TIMEOUTS)
    watch = wirefuzz.MemoryWatch(root).start()

    started = time.monotonic()
    deadline = started + FUZZ_SECONDS
    sends: list[tuple[str, subprocess.CompletedProcess]] = []

    def send_good_series() -> None:
        for number, (series_uid, files) in enumerate(series):
            time.sleep(max(started + number * FUZZ_SECONDS / GOOD_SERIES + 1 - time.monotonic(), 0))
            sends.append((series_uid, storescu(node.port, files, check=False)))

    counter = itertools.count()
    outcomes: list[wirefuzz.Outcome] = []
    crashes: list[str] = []

    def fuzz() -> None:
        while time.monotonic() < deadline:
            index = next(counter)
            case = wirefuzz.make_case(FUZZ_SEED, index)
            try:
                outcomes.append(wirefuzz.run_case(node.port, case, wirefuzz.TIMEOUTS))
            except Exception as exc:  # noqa: BLE001 - a bug of the fuzzer, reported below
                crashes.append(f"[{case.key}] {case.name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=send_good_series, name="good-series")]
    threads += [threading.Thread(target=fuzz, name=f"fuzz-{n}") for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watch.stop()
    fuzz_seconds = time.monotonic() - started

    problems: list[str] = []
    # no crash
    if node.process.poll() is not None:
        problems.append(f"the node exited with {node.process.returncode}")
    now_receivers = sorted(wirefuzz.receiver_pids(root))
    if now_receivers != receivers:
        problems.append(f"receiver processes changed: {receivers} -> {now_receivers}")
    errors = wirefuzz.unexpected_errors(node.log_path.read_text(errors="replace"))
    if errors:
        problems.append(f"{len(errors)} unexpected errors logged, e.g. {errors[0][:600]}")
    echo = wirefuzz.echo(node.port)
    if echo.returncode != 0 or "Received Echo Response (Success)" not in echo.stderr + echo.stdout:
        problems.append(f"echoscu after fuzzing failed: {echo.stderr[-500:]}")
    # bounded memory
    for pid, growth in watch.growth_mib().items():
        if growth > RSS_BUDGET_MIB:
            problems.append(f"pid {pid} grew by {growth:.0f} MiB (bound {RSS_BUDGET_MIB:.0f})")
    # every good series complete
    for series_uid, result in sends:
        text = result.stderr + result.stdout
        successes = text.count("Received Store Response (Success)")
        if result.returncode != 0 or successes != SERIES_INSTANCES:
            problems.append(
                f"storescu of {series_uid}: exit {result.returncode}, "
                f"{successes} successes: {text[-400:]}"
            )
    if len(sends) != GOOD_SERIES:
        problems.append(f"only {len(sends)} of {GOOD_SERIES} good series were sent")
    for series_uid, _ in series:
        state = None
        for _ in range(100):
            state = _series_state(node.data_dir, series_uid)
            if state and state[0] == "complete":
                break
            time.sleep(0.2)
        if state != ("complete", SERIES_INSTANCES, SERIES_INSTANCES):
            problems.append(f"good series {series_uid} not complete: (state, count, rows) {state}")
    # every fuzz case answered as the Upper Layer requires
    verdicts = collections.Counter(outcome.verdict for outcome in outcomes)
    failing = [outcome for outcome in outcomes if outcome.violations]
    inconclusive = [outcome for outcome in outcomes if outcome.verdict == "no-association"]
    if len(inconclusive) > INCONCLUSIVE_SHARE * max(len(outcomes), 1):
        problems.append(
            f"{len(inconclusive)} cases found their standard association refused under the "
            f"limit, e.g. {inconclusive[0].describe()}"
        )
    problems += [f"fuzzer error: {crash}" for crash in crashes[:5]]
    kinds = collections.Counter(
        (outcome.case.name, violation) for outcome in failing for violation in outcome.violations
    )
    examples: dict[tuple[str, str], wirefuzz.Outcome] = {}
    for outcome in failing:
        for violation in outcome.violations:
            examples.setdefault((outcome.case.name, violation), outcome)
    findings = Path(os.environ.get("DICOMNODE_FUZZ_FINDINGS", tmp_path / "findings"))
    if failing:
        findings.mkdir(parents=True, exist_ok=True)
        for (name, violation), outcome in examples.items():
            spec = wirefuzz.case_to_json(outcome.case, defect=f"{violation}: {outcome.describe()}")
            target = findings / f"{name}-{outcome.case.key.replace(':', '-')}.json"
            target.write_text(json.dumps(spec, indent=1) + "\n")
        problems.append(
            f"{len(failing)} of {len(outcomes)} cases misanswered (JSON seeds in {findings}):\n"
            + "\n".join(
                f"  {count} x {name}: {violation}; e.g. {examples[(name, violation)].describe()}"
                for (name, violation), count in kinds.most_common()
            )
        )
    summary = (
        f"{len(outcomes)} cases in {fuzz_seconds:.0f}s (seed {FUZZ_SEED}): {dict(verdicts)}\n"
        f"memory: {watch.report()}"
    )
    quiet = collections.Counter(
        f"{outcome.case.name}: {outcome.verdict}" for outcome in outcomes if not outcome.replies
    )
    summary += f"\nwithout a reply: {dict(sorted(quiet.items()))}"
    for outcome in inconclusive[:3]:
        summary += f"\ninconclusive: {outcome.describe()}"
    print(summary)
    assert not problems, summary + "\n" + "\n".join(problems)
