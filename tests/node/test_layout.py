"""The import rules of docs/architecture.md's Layout table, checked on every import statement.

Each module under dicomnode/, pipeline/, models/ and db/ is parsed with ``ast``; every import of
one of our packages (``import x``, ``from x import y``, relative imports, and imports inside
functions alike) must be allowed for the folder it sits in. The arrows point one way, down the
data flow: ``net`` is the bottom and knows nothing of the node; ``receive`` queues jobs,
``process`` fills the outbox, ``deliver`` sends. ``jobs``, ``config``, ``logs``, ``durable``
and ``identity`` are shared by every stage and import none. ``db`` (the schema and sessions)
sits below the stages that record rows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("dicomnode", "pipeline", "models", "db")
STAGES = (
    "dicomnode.net",
    "dicomnode.receive",
    "dicomnode.process",
    "dicomnode.deliver",
    "dicomnode.cluster",
)
SHARED = (
    "dicomnode.jobs",
    "dicomnode.config",
    "dicomnode.logs",
    "dicomnode.durable",
    "dicomnode.identity",
    "dicomnode.rule_patterns",
)

# folder or module -> the packages and modules of ours it may import (besides itself)
RULES: dict[str, tuple[str, ...]] = {
    # the implementation's identity is two constants the listener and requestor present
    "dicomnode.net": ("dicomnode.net", "dicomnode.identity"),
    "dicomnode.receive": ("dicomnode.receive", "dicomnode.net", *SHARED, "db"),
    "dicomnode.process": (
        "dicomnode.process",
        "dicomnode.deliver",
        *SHARED,
        "pipeline",
        "models",
        "db",
    ),
    "dicomnode.deliver": ("dicomnode.deliver", "dicomnode.net", *SHARED, "db"),
    # several machines: drives the runner's claim and outcome under a lease; never the reverse
    "dicomnode.cluster": ("dicomnode.cluster", "dicomnode.process", *SHARED, "db"),
    # the shared modules import no stage
    "dicomnode.jobs": ("dicomnode.jobs", "dicomnode.logs", "db"),
    "dicomnode.config": ("dicomnode.config", "dicomnode.rule_patterns", "pipeline"),
    "dicomnode.logs": ("dicomnode.logs",),
    "dicomnode.durable": ("dicomnode.durable",),
    "dicomnode.identity": ("dicomnode.identity",),
    "dicomnode.rule_patterns": ("dicomnode.rule_patterns",),
    "pipeline": ("pipeline", "models"),
    "models": ("models",),
    "db": ("db",),
}

# Known breaches, each to be removed by the change that fixes it.
ALLOWED_EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # "from dicomnode import durable" imports the module dicomnode.durable
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
            found.append((node.lineno, name))
    return found


def _ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule_for(module: str) -> str | None:
    matches = [key for key in RULES if _within(module, key)]
    return max(matches, key=len) if matches else None


def _is_module(name: str) -> bool:
    """Whether ``name`` is one of our modules or packages (and not a name imported from one)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(
        p for top in OURS for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts
    )


def test_every_stage_imports_only_what_the_layout_allows():
    breaches = []
    for path in _sources():
        module = _module_name(path)
        rule = _rule_for(module)
        if rule is None:  # dicomnode/ itself (node, http, commands, ...): may import the stages
            continue
        for line, name in _imports(path):
            if not _ours(name) or not _is_module(name) or name in OURS:
                continue
            if any(_within(name, allowed) for allowed in RULES[rule]):
                continue
            if (rule, name) in ALLOWED_EXCEPTIONS:
                continue
            breaches.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({rule})")
    assert not breaches, "\n".join(breaches)


def test_the_network_package_knows_nothing_of_the_node():
    """The bottom of the stack, stated on its own: net imports only net (and the two constants
    of the implementation's identity, which import nothing)."""
    for path in (ROOT / "dicomnode" / "net").rglob("*.py"):
        for line, name in _imports(path):
            if _ours(name) and name not in OURS:
                assert _within(name, "dicomnode.net") or _within(name, "dicomnode.identity"), (
                    f"{path.name}:{line} imports {name}"
                )


@pytest.mark.parametrize("shared", SHARED)
def test_shared_modules_import_no_stage(shared):
    path = ROOT.joinpath(*shared.split(".")).with_suffix(".py")
    if not path.exists():
        pytest.skip(f"{shared} does not exist")
    for line, name in _imports(path):
        if not _is_module(name):
            continue
        stage = next((s for s in STAGES if _within(name, s)), None)
        if stage is not None and (shared, name) not in ALLOWED_EXCEPTIONS:
            raise AssertionError(f"{path.name}:{line} imports the stage {stage} ({name})")


def test_the_checker_sees_every_import_form(tmp_path, monkeypatch):
    """The rules mean nothing if the parser misses an import form."""
    fake = ROOT / "dicomnode" / "net" / "fake.py"
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: (
            "import dicomnode.config\n"
            "from dicomnode.receive import intake\n"
            "from . import ul\n"
            "from ..jobs import transition\n"
            "def f():\n"
            "    from dicomnode.receive.assembly import SeriesAssembler\n"
        ),
    )
    names = {name for _, name in _imports(fake)}
    assert {
        "dicomnode.config",
        "dicomnode.receive.intake",
        "dicomnode.net.ul",
        "dicomnode.jobs",
        "dicomnode.receive.assembly",
    } <= names
