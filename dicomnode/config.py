"""The node's one TOML configuration file, validated at start so that mistakes surface early.

Every problem is reported with the dotted key it concerns (``rules.0.destinations``), because a
PACS administrator editing the file needs to know where to look, not a Python traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pipeline.settings import PipelineSettings

DEFAULT_CONFIG_PATH = Path("/etc/dicomnode/dicomnode.toml")
CONFIG_ENV = "DICOMNODE_CONFIG"

AE_TITLE_LIMIT = 16


def validate_ae_title(value: str) -> str:
    """An AE title that can go on the wire (PS3.5 6.2, VR AE): 1 to 16 characters of printable
    ASCII, no backslash, no leading or trailing space (peers strip the padding, so such a title
    could never match). ValueError saying what is wrong, otherwise the title unchanged."""
    if not value:
        raise ValueError("AE title must not be empty")
    if len(value) > AE_TITLE_LIMIT:
        raise ValueError(f"AE title {value!r} is {len(value)} characters long; at most 16")
    bad = sorted({c for c in value if not " " <= c <= "~" or c == "\\"})
    if bad:
        shown = ", ".join(_character(c) for c in bad)
        raise ValueError(
            f"AE title {value!r} contains {shown}: only printable ASCII characters other than "
            "backslash are allowed"
        )
    if value != value.strip(" "):
        raise ValueError(f"AE title {value!r} has leading or trailing spaces")
    return value


def _character(c: str) -> str:
    if c == "\\":
        return "a backslash"
    if c.isascii():
        return f"control character 0x{ord(c):02X}"
    return f"non-ASCII character {c!r} (U+{ord(c):04X})"


AETitle = Annotated[str, AfterValidator(validate_ae_title)]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key silently ignored is worse than a refusal."""

    model_config = ConfigDict(extra="forbid")


class TLSSettings(_Strict):
    """Paths to PEM files. For the listener (``[node.tls]``), with ``ca_certificates`` set,
    peers must present a certificate from those CAs (or may, with
    ``require_client_certificate = false``). For a destination, the node presents
    ``certificate`` and verifies the destination's against ``ca_certificates``;
    ``require_client_certificate`` is refused there (it would do nothing)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = True

    @model_validator(mode="after")
    def _files_exist(self) -> TLSSettings:
        for name in ("certificate", "private_key", "ca_certificates"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: file not found: {path}")
        return self


def _no_client_certificate_choice(value: Any) -> Any:
    """A destination's ``tls`` table without ``require_client_certificate``: whether to ask the
    peer for a certificate is the listener's choice; the node, as a requestor, always presents
    its own and verifies the destination's, so the key would do nothing there."""
    if isinstance(value, dict) and "require_client_certificate" in value:
        raise ValueError(
            "require_client_certificate: only [node.tls] (the listener) asks peers for a "
            "certificate; a destination always gets the node's certificate and has its own "
            "verified against ca_certificates. Remove this key here"
        )
    return value


class AcceptSettings(_Strict):
    calling_ae_titles: list[AETitle] = Field(default_factory=list)
    source_networks: list[str] = Field(default_factory=list)

    @field_validator("source_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network: {item!r}") from exc
        return value

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.source_networks]


AUTO_RECEIVER_PROCESSES = 4


class NodeSettings(_Strict):
    ae_title: AETitle = "IQTNODE"
    port: int = Field(default=11112, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("/var/lib/dicomnode")
    database_url: str | None = None
    http_port: int = Field(default=8081, ge=0, le=65535)
    http_address: str = "127.0.0.1"
    min_free_mb: float = Field(default=1024.0, ge=0)
    max_pdu_size: int = Field(default=0, ge=0)
    # Deadline for each whole PDU (not each read): a sender that drips bytes loses its slot.
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    # Deadline from TCP connect to a complete A-ASSOCIATE-RQ.
    association_request_timeout_seconds: float = Field(default=10.0, gt=0)
    max_associations: int = Field(default=16, ge=1)
    # Connections not yet associated (TCP accepted, A-ASSOCIATE-RQ pending), across the node.
    max_pending_connections: int = Field(default=32, ge=1)
    # Largest C-STORE dataset (and largest inflated deflate dataset) kept; a larger one is
    # refused with 0xA700 before its bytes are held. Bounds memory at about
    # max_associations x max_dataset_mb in the worst case.
    max_dataset_mb: float = Field(default=512.0, gt=0)
    # 0: one per CPU core, at most AUTO_RECEIVER_PROCESSES (see listener_processes)
    receiver_processes: int = Field(default=0, ge=0, le=64)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tls: TLSSettings | None = None
    accept: AcceptSettings = Field(default_factory=AcceptSettings)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    def listener_processes(self) -> int:
        """How many processes accept associations.

        One process is held to one core by Python's GIL while several scanners send; beyond
        a few processes each adds memory and database connections for little more intake.
        """
        return self.receiver_processes or min(os.cpu_count() or 1, AUTO_RECEIVER_PROCESSES)

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dicomnode.sqlite3'}"


class CompletionSettings(_Strict):
    quiet_seconds: float = Field(default=30.0, gt=0)
    check_interval_seconds: float = Field(default=1.0, gt=0)


class RetentionSettings(_Strict):
    days: float = Field(default=7.0, ge=0)
    check_interval_seconds: float = Field(default=3600.0, gt=0)


class DeliverySettings(_Strict):
    """The outbox's retry schedule and the sender's timeouts."""

    max_attempts: int = Field(default=10, ge=1)
    initial_backoff_seconds: float = Field(default=30.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=500, ge=1)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    stop_timeout_seconds: float = Field(default=20.0, gt=0)
    # How long a sender holds the outbox rows of its batch (renewed as results are committed);
    # a sender that died releases them when this runs out, to any other sender.
    claim_seconds: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DeliverySettings:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds: must not be below initial_backoff_seconds")
        return self

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
        exponent = min(max(attempts - 1, 0), 60)
        return min(self.max_backoff_seconds, self.initial_backoff_seconds * 2.0**exponent)


class Destination(_Strict):
    name: str = Field(min_length=1)
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TLSSettings | None = None

    @field_validator("tls", mode="before")
    @classmethod
    def _client_tls(cls, value: Any) -> Any:
        return _no_client_certificate_choice(value)


MatchValue = str | int | float | bool | list[str | int | float]
Action = Literal["enhance", "forward"]


class Rule(_Strict):
    """One routing rule; the first that matches a complete series decides what happens to it.

    ``profile`` (e.g. ``T1-0.36T``; default ``[runner] default_profile``) selects the active
    model of an ``enhance`` rule. When no model fits a series (none active for the profile, or
    none for its slice geometry) ``when_no_model`` says what happens: ``forward`` the originals
    or ``ignore`` the series; it is never enhanced by another profile's model.
    ``forward_originals`` sends the originals of an enhanced series too (a second, ``forward``
    job), for a node placed between scanner and PACS.
    """

    name: str = Field(min_length=1)
    match: dict[str, MatchValue] = Field(default_factory=dict)
    action: Action
    destinations: list[str] = Field(default_factory=list)
    profile: str | None = None
    when_no_model: Literal["forward", "ignore"] = "ignore"
    forward_originals: bool = False

    @field_validator("match")
    @classmethod
    def _valid_patterns(cls, value: dict[str, MatchValue]) -> dict[str, MatchValue]:
        from dicomnode.rule_patterns import validate_pattern

        for key, pattern in value.items():
            for item in pattern if isinstance(pattern, list) else [pattern]:
                problem = validate_pattern(key, item)
                if problem:
                    raise ValueError(f"{key}: {problem}")
        return value


class ProfileEngine(_Strict):
    """A weightless engine that enhances a profile no trained model serves (``[profiles.NAME]``).

    For example ``[profiles."T2-64mT"] engine = "inr"`` runs the unsupervised per-case INR
    (``models.inr``) on every series the rules route to ``T2-64mT``, with ``options`` (fields of
    ``models.inr.INRSettings``: ``iterations``, ``time_budget_s`` ...). A trained model that is
    registered and active for the profile (``dicomnode models activate``) takes precedence, so
    a site can move a profile to a trained model without editing this file. The options are
    checked when the configuration is read.
    """

    engine: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _engine_builds(self) -> ProfileEngine:
        from pipeline.engines import build_engine
        from pipeline.errors import EnhanceError

        try:
            build_engine(self.engine, **self.options)
        except EnhanceError as exc:
            raise ValueError(exc.message) from None
        return self


class RunnerSettings(_Strict):
    """The job runner: worker processes that keep their model loaded between jobs.

    ``gpu = "auto"`` runs one worker per visible CUDA device (one job at a time per GPU);
    ``cpu_workers`` (default: 1 without a GPU, 0 with one) bounds the CPU pool, each worker using
    ``cpu_threads`` threads. A job running longer than ``job_timeout_seconds`` has its worker
    killed and fails (retryable). A worker process that dies under a job (the kernel's OOM
    killer, a crash in native code) is not the series' fault: the job is queued again
    automatically up to ``worker_died_retries`` times (counted in ``jobs.worker_deaths``), then
    fails with ``[worker-died]``. An output whose data-consistency score is below
    ``consistency_threshold_db`` is delivered with "REVIEW" in its SeriesDescription
    (``below_threshold = "flag"``) or held back until ``dicomnode jobs release`` (``"hold"``).
    """

    gpu: Literal["auto", "off"] = "auto"
    default_profile: str = "T1-0.36T"
    cpu_workers: int | None = Field(default=None, ge=0, le=64)
    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    job_timeout_seconds: float = Field(default=900.0, gt=0)
    worker_died_retries: int = Field(default=2, ge=0, le=10)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    consistency_threshold_db: float | None = 20.0
    below_threshold: Literal["flag", "hold"] = "flag"
    review_marker: str = Field(default="REVIEW", min_length=1, max_length=16)
    output_format: Literal["sc", "mr"] | None = None


class ClusterSettings(_Strict):
    """Several machines (README "Running on several machines"): off by default.

    With ``enabled``, ``serve`` runs no job runner: it receives, delivers and publishes the ids
    of queued ``enhance`` jobs to the Celery ``queue`` on ``broker_url`` (RabbitMQ), and
    ``dicomnode worker`` processes on any machine run them. PostgreSQL (``[node] database_url``)
    is the one record and ``data_dir`` a shared POSIX path. A worker holds a job with a lease of
    ``lease_seconds``, renewed every ``heartbeat_seconds``; a job is taken over only once its
    lease has expired, and fails after ``max_attempts`` claims. A queued job whose message is
    not in the broker after ``republish_seconds`` is published again. On SIGTERM a worker
    finishes its job within ``drain_seconds`` or returns it to the queue.
    """

    enabled: bool = False
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    queue: str = Field(default="dicomnode.enhance", min_length=1, max_length=200)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    publish_interval_seconds: float = Field(default=0.5, gt=0)
    republish_seconds: float = Field(default=60.0, gt=0)
    drain_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ClusterSettings:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                "heartbeat_seconds: must be at most half of lease_seconds, so that one late "
                "renewal does not lose the lease"
            )
        return self


class Config(_Strict):
    node: NodeSettings = Field(default_factory=NodeSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    destinations: list[Destination] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    profiles: dict[str, ProfileEngine] = Field(default_factory=dict)
    pipeline: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pipeline")
    @classmethod
    def _valid_pipeline(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pipeline.settings import PipelineSettings

        try:
            PipelineSettings.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{key}: {first['msg']}") from None
        return value

    def pipeline_settings(self) -> PipelineSettings:
        from pipeline.settings import PipelineSettings

        return PipelineSettings.model_validate(self.pipeline)

    @model_validator(mode="after")
    def _cluster_needs_a_server_database(self) -> Config:
        url = self.node.database_url or ""
        if self.cluster.enabled and not url.startswith("postgresql"):
            raise ValueError(
                "cluster.enabled: several machines share one PostgreSQL database; set "
                "[node] database_url = 'postgresql+psycopg://...' (SQLite is one machine's)"
            )
        return self

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        names = [d.name for d in self.destinations]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"destinations: duplicate names {sorted(duplicates)}")
        rule_names = [r.name for r in self.rules]
        if len(set(rule_names)) != len(rule_names):
            raise ValueError("rules: rule names must be unique")
        for index, rule in enumerate(self.rules):
            unknown = [d for d in rule.destinations if d not in names]
            if unknown:
                raise ValueError(
                    f"rules.{index}.destinations: unknown destination(s) {unknown}; "
                    f"defined: {names}"
                )
        return self


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds (key, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {key}: {message}" for key, message in problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


_ROOT_KEY = re.compile(r"^Value error, ")


def _problems_from(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = _ROOT_KEY.sub("", item["msg"])
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append((key, message))
    return problems


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems_from(exc)) from None


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", exc.strerror or str(exc))]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("(syntax)", str(exc))]) from None
    return parse_config(data, str(path))


def config_path(explicit: Path | None) -> Path:
    """``--config``, else ``$DICOMNODE_CONFIG``, else the system-wide default."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH
