"""The engine registry and the classical ``bspline`` engine.

Engines implement ``models.engine.ThroughPlaneEngine``. They are registered by name with a
factory (so loading weights happens only when an engine is used) and a rank: without ``--model``
the node uses the highest-ranked engine that accepts the series profile and loads, which is the
trained IQT model once ``models`` registers it, and ``bspline`` (rank 0) otherwise. Another module
registers an engine either by calling ``register_engine`` at import time or, without being
imported by us, through the ``dicomnode.engines`` entry-point group (``name = "module:factory"``).

An engine that runs weights files may also register a loader (``from_weights``): ``load_engine``
builds it from given files, one per factor, each checked against its sha256 before it is loaded.
That is how the node's worker runs the model registry's versions (``iqt-t1`` under each
version's own name, ``iqt-mc`` for the contrast-agnostic rows), while ``get_engine`` /
``choose_engine`` serve ``dicomnode enhance`` and the benches: one registry picks and builds
every engine.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from models.baseline import cubic_bspline_upsample
from models.engine import EngineInfo, EngineResult, ThroughPlaneEngine
from pipeline.errors import EnhanceError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dicomnode.engines"

EngineFactory = Callable[..., ThroughPlaneEngine]
"""Builds an engine; weightless engines take their options as keywords (``build_engine``)."""
Profile = Mapping[str, object]
"""Series attributes an engine may look at to accept a series: Modality, SeriesDescription,
MagneticFieldStrength, slice_spacing, pixel_spacing (see ``pipeline.run.series_profile``), and
``profile`` (e.g. ``T2-64mT``) when the routing rules named one."""


@dataclass(frozen=True)
class WeightsFile:
    """One weights file for one factor, as a model registry row names it."""

    path: Path
    sha256: str | None = None
    """Checked before the file is loaded (``None``: not checked)."""
    tile: Mapping[str, object] | None = None
    """Tiled-inference settings the file was evaluated with (``models.infer.TileSettings``
    fields); ``None``: the engine's default."""


WeightsLoader = Callable[..., ThroughPlaneEngine]
"""``loader(weights: Mapping[int, WeightsFile], /, **options)``: an engine running those files
(``options`` may include ``name``: the name the engine reports)."""


@dataclass(frozen=True)
class Registration:
    name: str
    factory: EngineFactory
    rank: int = 0
    accepts: Callable[[Profile], bool] | None = None
    from_weights: WeightsLoader | None = None


_lock = threading.Lock()
_registry: dict[str, Registration] = {}
_instances: dict[str, ThroughPlaneEngine] = {}
_entry_points_loaded = False


def register_engine(
    name: str,
    factory: EngineFactory,
    *,
    rank: int = 0,
    accepts: Callable[[Profile], bool] | None = None,
    from_weights: WeightsLoader | None = None,
    replace: bool = False,
) -> None:
    """Make ``factory`` available as engine ``name``.

    ``rank`` orders engines for automatic choice (higher first); ``accepts`` says whether the
    engine fits a series profile (``None``: any); ``from_weights`` builds the engine from given
    weights files (``load_engine``). Registering a taken name is an error unless ``replace`` is
    set, so two modules cannot silently shadow each other.
    """
    with _lock:
        if name in _registry and not replace:
            raise ValueError(f"engine {name!r} is already registered")
        _registry[name] = Registration(name, factory, rank, accepts, from_weights)
        _instances.pop(name, None)


def unregister_engine(name: str) -> None:
    with _lock:
        _registry.pop(name, None)
        _instances.pop(name, None)


def available_engines() -> list[str]:
    """Registered engine names, highest rank first."""
    _load_entry_points()
    return [r.name for r in sorted(_registry.values(), key=lambda r: (-r.rank, r.name))]


def get_engine(name: str) -> ThroughPlaneEngine:
    """The engine registered as ``name`` (created once, then reused)."""
    _load_entry_points()
    with _lock:
        if name in _instances:
            return _instances[name]
        registration = _registry.get(name)
    if registration is None:
        raise EnhanceError(
            "unknown-engine",
            f"no engine named {name!r}; available: {', '.join(available_engines())}",
        )
    try:
        engine = registration.factory()
    except Exception as exc:
        raise EnhanceError("engine-unavailable", f"engine {name!r} cannot load: {exc}") from exc
    if not isinstance(engine, ThroughPlaneEngine):
        raise EnhanceError("engine-invalid", f"engine {name!r} does not implement the contract")
    with _lock:
        _instances[name] = engine
    return engine


def build_engine(name: str, /, **options: object) -> ThroughPlaneEngine:
    """A new engine ``name`` that needs no weights file (``bspline``, ``inr``), built with
    ``options`` (for ``inr``: the fields of ``models.inr.INRSettings``, e.g. ``iterations``,
    ``time_budget_s``, ``device``, ``threads``).

    How the node runs a profile that no trained model serves: ``[profiles."T2-0.36T"] engine =
    "inr"`` in its configuration. Not kept here: the caller (the worker) keeps it. Unknown
    options are an error that names them, so a typo in the configuration is refused at start.
    """
    _load_entry_points()
    with _lock:
        registration = _registry.get(name)
    if registration is None:
        raise EnhanceError(
            "unknown-engine",
            f"no engine named {name!r}; available: {', '.join(available_engines())}",
        )
    if registration.from_weights is not None:
        raise EnhanceError(
            "engine-needs-weights",
            f"engine {name!r} runs trained weights: register and activate them with "
            "'dicomnode models' instead",
        )
    try:
        engine = registration.factory(**options)
    except TypeError as exc:
        raise EnhanceError("engine-options", f"engine {name!r}: {exc}") from exc
    if not isinstance(engine, ThroughPlaneEngine):
        raise EnhanceError("engine-invalid", f"engine {name!r} does not implement the contract")
    return engine


def runs_weights(name: str) -> bool:
    """Whether ``name`` is a registered engine that runs weights files (has a loader)."""
    _load_entry_points()
    with _lock:
        registration = _registry.get(name)
    return registration is not None and registration.from_weights is not None


def engine_takes(name: str, option: str) -> bool:
    """Whether the weightless engine ``name`` takes ``option`` (``device``, ``threads``): the
    worker passes its slot's device and threads only to engines that run on one (``inr``),
    never to classical interpolation."""
    _load_entry_points()
    with _lock:
        registration = _registry.get(name)
    if registration is None:
        return False
    parameters = inspect.signature(registration.factory).parameters.values()
    return any(p.name == option or p.kind is p.VAR_KEYWORD for p in parameters)


def load_engine(
    engine: str, weights: Mapping[int, WeightsFile], /, **options: object
) -> ThroughPlaneEngine:
    """A new engine of the registered kind ``engine`` running ``weights`` (one file per factor),
    each file's sha256 checked before it is loaded.

    ``options`` go to the engine's loader (for ``iqt-t1``: the ``name`` and ``version`` to
    report, ``consistency_correction``, ``device``, ``threads``). The engine is not kept here:
    the caller keeps it (the worker, per file and device). Errors of the loader (a file whose
    hash does not match, one that is not the network) reach the caller unchanged.
    """
    _load_entry_points()
    with _lock:
        registration = _registry.get(engine)
    if registration is None:
        raise EnhanceError(
            "unknown-engine",
            f"no engine named {engine!r}; available: {', '.join(available_engines())}",
        )
    if registration.from_weights is None:
        raise EnhanceError("engine-invalid", f"engine {engine!r} does not run weights files")
    if not weights:
        raise ValueError(f"engine {engine!r} needs at least one weights file")
    built = registration.from_weights(weights, **options)
    if not isinstance(built, ThroughPlaneEngine):
        raise EnhanceError("engine-invalid", f"engine {engine!r} does not implement the contract")
    return built


def choose_engine(
    name: str | None, profile: Profile | None = None
) -> tuple[ThroughPlaneEngine, str]:
    """The named engine, or the best one for the profile; returns it with a sentence saying why."""
    if name:
        return get_engine(name), f"engine {name!r} as requested"
    profile = profile or {}
    for candidate in available_engines():
        registration = _registry[candidate]
        if registration.accepts is not None and not registration.accepts(profile):
            continue
        try:
            return get_engine(
                candidate
            ), f"engine {candidate!r}, the best available for this series"
        except EnhanceError as exc:
            log.warning("skipping engine %s: %s", candidate, exc)
    raise EnhanceError("no-engine", "no registered engine accepts this series")


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _registry:
            continue
        try:
            register_engine(entry.name, entry.load())
        except Exception as exc:  # a broken plug-in must not take the pipeline down
            log.warning("engine entry point %s failed to load: %s", entry.name, exc)


class BSplineEngine:
    """Cubic B-spline interpolation through-plane: the baseline every model is compared with.

    The one implementation is ``models.baseline.cubic_bspline_upsample``, with mirror boundaries
    (those of SimpleITK's B-spline interpolator): the spline passes through the acquired slices
    and is evaluated at the output positions of the grid convention in ``models.engine``
    (output slice ``i*k + j`` at slice coordinate ``i + (j - (k-1)/2) / k``). In-plane data is
    untouched.
    """

    VERSION = "1.0.0"

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="bspline",
            version=self.VERSION,
            weights_sha256=None,
            description="cubic B-spline interpolation through-plane (scipy.ndimage)",
            learned=False,
        )

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return (2, 3, 4, 5, 6, 7, 8)

    def upsample(
        self, volume: np.ndarray, factor: int, slice_thickness_ratio: float = 1.0
    ) -> EngineResult:
        if factor not in self.supported_factors:
            raise ValueError(f"factor {factor} not in {self.supported_factors}")
        out = cubic_bspline_upsample(np.asarray(volume, dtype=np.float32), factor, "mirror")
        return EngineResult(out, notes={"method": "cubic B-spline, mirror boundary"})


register_engine("bspline", BSplineEngine, rank=0)


def _released_iqt() -> ThroughPlaneEngine:
    """The released ``iqt-t1`` weights (all factors); loaded only when the engine is first used."""
    from models.iqt_engine import create_engine

    return create_engine()


def _iqt_accepts(profile: Profile) -> bool:
    from models.iqt_engine import accepts_profile

    return accepts_profile(profile)


def _iqt_from_weights(
    weights: Mapping[int, WeightsFile], /, **options: object
) -> ThroughPlaneEngine:
    """``IQTEngine`` over the given ANISO U-Net files (``models.release.load_weights`` checks
    each sha256 first); each factor runs with its file's tile, else the default tile."""
    from models.infer import TileSettings
    from models.iqt_engine import IQTEngine
    from models.release import load_weights

    networks = {k: load_weights(Path(w.path), w.sha256) for k, w in weights.items()}
    tiles = {k: TileSettings(**w.tile) for k, w in weights.items() if w.tile}  # type: ignore[arg-type]
    options.setdefault("tiles", tiles)
    hashes = {k: w.sha256 for k, w in weights.items() if w.sha256}
    return IQTEngine(networks, file_hashes=hashes, **options)  # type: ignore[arg-type]


# The trained model outranks the baseline wherever it fits the series (low-field T1 MR); the node
# itself runs the registry's active version instead (see dicomnode.process.runner), built with
# ``load_engine("iqt-t1", ...)`` from that version's files.
register_engine(
    "iqt-t1", _released_iqt, rank=10, accepts=_iqt_accepts, from_weights=_iqt_from_weights
)


def _released_mc() -> ThroughPlaneEngine:
    """The released ``iqt-mc`` weights (all factors); FileNotFoundError when none ship."""
    from models.iqt_engine import create_mc_engine

    return create_mc_engine()


def _mc_accepts(profile: Profile) -> bool:
    from models.iqt_engine import accepts_mc_profile

    return accepts_mc_profile(profile)


def _mc_from_weights(
    weights: Mapping[int, WeightsFile], /, **options: object
) -> ThroughPlaneEngine:
    """The ``iqt-t1`` loader over contrast-agnostic files: one inference code, the files'
    own metadata (normalisation, profiles) and the ``iqt-mc`` family's file names."""
    from models.release import MC_MODEL_NAME

    options.setdefault("name", MC_MODEL_NAME)
    options.setdefault("family", MC_MODEL_NAME)
    return _iqt_from_weights(weights, **options)


# One contrast-agnostic network for the profiles its release lists (T2 and FLAIR, 64 mT): above
# ``bspline`` and ``inr`` for those profiles, as ``iqt-t1`` is for T1 (a release is made only
# once the quality bench shows it beats cubic). It accepts only the routed profiles its shipped
# weights serve, so with none shipped it is never chosen and nothing changes; the node's worker
# runs the registry's ``iqt-mc`` rows through its loader.
register_engine("iqt-mc", _released_mc, rank=5, accepts=_mc_accepts, from_weights=_mc_from_weights)


def _register_released_versions() -> None:
    """``iqt-t1@VERSION`` (and ``iqt-mc@VERSION``) for every version shipped with the software,
    so an older release can still be run by name (``dicomnode enhance --model iqt-t1@0.1.0``,
    the quality bench). Ranked below ``bspline``: never chosen automatically, so a broken newest
    release cannot silently fall back to an older model."""
    from models.release import MC_MODEL_NAME, MODEL_NAME, entry_name, read_manifest

    kinds = {
        MODEL_NAME: (_iqt_accepts, _iqt_from_weights),
        MC_MODEL_NAME: (_mc_accepts, _mc_from_weights),
    }
    shipped = {(entry_name(e), str(e["version"])) for e in read_manifest()["models"].values()}
    for name, version in sorted(shipped):
        if name not in kinds:
            continue
        accepts, loader = kinds[name]

        def factory(version: str = version, name: str = name) -> ThroughPlaneEngine:
            from models.iqt_engine import IQTEngine

            return IQTEngine.from_release(version=version, name=name)

        register_engine(f"{name}@{version}", factory, rank=-1, accepts=accepts, from_weights=loader)


_register_released_versions()


def _inr(**options: object) -> ThroughPlaneEngine:
    """The unsupervised per-case engine ``inr`` (``models.inr``): no weights to load;
    ``options`` are ``INRSettings`` fields."""
    from models.inr import create_engine

    return create_engine(**options)


def _inr_accepts(profile: Profile) -> bool:
    from models.inr import accepts_profile

    return accepts_profile(profile)


# Ranked below ``bspline``: fitting takes minutes per series on a CPU and the quality bench has
# not shown it beats cubic on every profile, so it runs only when asked for by name
# (``dicomnode enhance --model inr``).
register_engine("inr", _inr, rank=-1, accepts=_inr_accepts)
