"""The stage interface, the context a stage runs in, and the registry.

A stage is one file in ``prism/stages/``: a subclass of :class:`Stage` with a ``name``, the
stages it ``requires``, a ``Params`` dataclass (typed, validated in ``__post_init__``), a
``model()`` identity and one ``run(ctx)`` method. ``@register`` puts it in the registry; the
runner orders stages by ``requires`` and never needs editing when a stage is added. Third-party
stages can register through the ``prism.stages`` entry-point group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prism.errors import ConfigError, StageInputMissing

if TYPE_CHECKING:
    import pyarrow as pa

    from prism.media import MediaInfo, VisualPass


@dataclass(frozen=True)
class ModelInfo:
    """What produced a stage's output: enough to decide whether a rerun would differ."""

    name: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class NoParams:
    """For stages without parameters."""


@dataclass
class StageResult:
    """What a stage reports back; its files are already in ``ctx.staging``."""

    outputs: list[str]  # paths relative to the title directory
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    status: str = "succeeded"  # or "skipped" (with reason) when the stage chose not to run
    reason: str | None = None


ProgressFn = Callable[[int, int | None, str], None]


class StageContext:
    """What one stage of one title can see: the source, shared decodes, upstream artifacts."""

    def __init__(
        self,
        *,
        title_id: str,
        source: Path,
        info: MediaInfo,
        title_dir: Path,
        staging: Path,
        shared: SharedMedia,
        progress: ProgressFn | None = None,
    ):
        self.title_id = title_id
        self.source = source
        self.info = info
        self.title_dir = title_dir
        self.staging = staging
        self._shared = shared
        self._progress = progress

    def progress(self, done: int, total: int | None, label: str = "") -> None:
        if self._progress:
            self._progress(done, total, label)

    def visual(self) -> VisualPass:
        """The title's single visual decode pass, shared by every stage that asks for it."""
        return self._shared.visual(self)

    def read_table(self, relative: str) -> pa.Table:
        """Read an upstream stage's Parquet artifact from the title directory."""
        import pyarrow.parquet as pq

        path = self.title_dir / relative
        if not path.exists():
            raise StageInputMissing(f"{self.title_id}: required artifact {relative} is missing")
        return pq.read_table(path)


class SharedMedia:
    """Per-title cache of the visual decode, so a title's video is decoded once whatever stages run.

    ``decode_seconds`` records each decode's cost, so the runner can report it on the stage
    that happened to trigger it rather than hide it in that stage's own time.
    """

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self._visual: VisualPass | None = None
        self._visual_error: Exception | None = None
        self.decode_seconds: dict[str, float] = {}

    def visual(self, ctx: StageContext) -> VisualPass:
        if self._visual_error is not None:  # a failed decode is not retried by the next stage
            raise self._visual_error
        if self._visual is None:
            from prism.errors import MediaError
            from prism.media import decode_visual

            t0 = time.perf_counter()
            try:
                self._visual = decode_visual(
                    ctx.source, ctx.info, self.work_dir, lambda d, t: ctx.progress(d, t, "decode")
                )
            except MediaError as exc:
                self._visual_error = exc
                raise
            finally:
                self.decode_seconds["visual"] = time.perf_counter() - t0
        return self._visual


class Stage(ABC):
    """Base class of every stage; see the module docstring."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type] = NoParams
    # Parameters that change how fast a stage runs, not what it outputs (device, batch size,
    # threads): recorded in the manifest but left out of the fingerprint, so they never force a rerun.
    execution_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = make_params(self.Params, params or {}, self.name)

    @abstractmethod
    def model(self) -> ModelInfo:
        """Identity of the model/algorithm; part of the skip fingerprint."""

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the work, write files into ``ctx.staging``, return what was written."""

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def params_hash(self) -> str:
        """Hash of the parameters that shape the output (``execution_params`` left out)."""
        shaping = {k: v for k, v in self.params_dict().items() if k not in self.execution_params}
        text = json.dumps(shaping, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_params(cls: type, values: dict[str, Any], stage: str) -> Any:
    """Build a stage's ``Params`` with each value checked against its declared type first.

    Values arrive untyped (``--param`` text, Step Functions JSON): ``threshold=abc`` or
    ``batch_windows=1.5`` must be a clear configuration error, not a crash deep in the stage.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"stage {stage!r}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):  # unresolvable annotation: the class validates its values itself
        hints = {}
    typed = {}
    for name, value in values.items():
        try:
            typed[name] = _coerce(value, hints.get(name, Any))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"stage {stage!r}: parameter {name!r} {exc}, got {value!r}") from None
    try:
        return cls(**typed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"stage {stage!r}: {exc}") from exc


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _coerce(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (bool, int, float, str, ``X | None``); other types pass through."""
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("must not be null")
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _coerce_one(value, option)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(" or ".join(errors))


def _coerce_one(value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("must be an integer")
    if kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ``--param embeddings.model=123`` arrives as a JSON number
        raise ValueError("must be a string")
    return value


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its name."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no stage name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"stage name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


_plugins_loaded = False


def registry() -> dict[str, type[Stage]]:
    """All stages: the built-in ones plus those other packages declare as ``prism.stages`` entry points."""
    global _plugins_loaded
    import prism.stages  # noqa: F401  (registers the built-in stages)

    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in entry_points(group="prism.stages"):
            register(entry.load())
    return dict(_REGISTRY)


def resolve_order(requested: list[str] | None = None) -> list[str]:
    """Stages to run, dependencies included, in an order that respects ``requires``."""
    stages = registry()
    wanted = list(stages) if not requested else list(requested)
    unknown = [name for name in wanted if name not in stages]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; available: {sorted(stages)}")
    graph: dict[str, set[str]] = {}
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in graph:
            continue
        deps = set(stages[name].requires)
        missing = deps - set(stages)
        if missing:
            raise ConfigError(f"stage {name!r} requires unknown stage(s) {sorted(missing)}")
        graph[name] = deps
        pending.extend(deps)
    sorter = TopologicalSorter(graph)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ConfigError(f"stage dependencies form a cycle: {exc.args[1]}") from exc
    rank = {name: i for i, name in enumerate(wanted)}
    order: list[str] = []
    while sorter.is_active():  # deterministic: ready stages in the order they were asked for
        ready = sorted(sorter.get_ready(), key=lambda n: (rank.get(n, len(rank)), n))
        order.extend(ready)
        sorter.done(*ready)
    return order
