"""The stage interface, the context a stage runs in, and the registry.

A stage is one file in ``prism/stages/``: a subclass of :class:`Stage` with a ``name``, the
stages it ``requires``, a ``Params`` dataclass (typed, validated in ``__post_init__``), a
``model()`` identity and one ``run(ctx)`` method. ``@register`` puts it in the registry; the
runner orders stages by ``requires`` and never needs editing when a stage is added. Third-party
stages can register through the ``prism.stages`` entry-point group.

A stage also declares what it writes (``outputs``: file, format and, for Parquet, the schema it
writes with, and the columns ``prism show`` prints) and optionally how the report draws it
(``report_lane``). The report, ``prism show``, the CDK job layout and the docs
check iterate these declarations, so adding a stage touches only its own file. Every declared
Parquet output is checked against its schema when the stage returns: a file that drifted from
its declaration fails the stage instead of reaching consumers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import importlib
import json
import math
import pkgutil
import threading
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prism.errors import ArtifactSchemaError, ConfigError, StageInputMissing

if TYPE_CHECKING:
    import pyarrow as pa

    from prism.audio.pcm import PcmStream, TrackStream
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
        wait_for: Callable[[str], bool] | None = None,
    ):
        self.title_id = title_id
        self.source = source
        self.info = info
        self.title_dir = title_dir
        self.staging = staging
        self._shared = shared
        self._progress = progress
        self._wait_for = wait_for

    def progress(self, done: int, total: int | None, label: str = "") -> None:
        if self._progress:
            self._progress(done, total, label)

    def wait_for(self, stage: str) -> bool:
        """Wait until ``stage`` has finished, when this run runs it beside the caller (optional
        inputs such as the audio stage's shots.parquet); False when it is not part of this run."""
        return self._wait_for(stage) if self._wait_for else False

    def visual(self) -> VisualPass:
        """The title's single visual decode pass, shared by every stage that asks for it."""
        return self._shared.visual(self)

    def audio_track(
        self, track: int, *, block_s: float = 600.0, loudness: bool = True, keep: bool = True
    ) -> TrackStream | PcmStream:
        """A stream of audio track ``track`` (16 kHz mono blocks, plus EBU R128 loudness unless
        ``loudness=False``), decoded once per title run however many stages read it (see
        :meth:`SharedMedia.audio_track`)."""
        return self._shared.audio_track(self, track, block_s=block_s, loudness=loudness, keep=keep)

    def will_run(self, stage: str) -> bool | None:
        """Whether ``stage`` runs later in this title run; None when the runner did not say."""
        return self._shared.will_run(stage)

    def read_table(self, relative: str) -> pa.Table:
        """Read an upstream stage's Parquet artifact from the title directory."""
        import pyarrow.parquet as pq

        path = self.title_dir / relative
        if not path.exists():
            raise StageInputMissing(f"{self.title_id}: required artifact {relative} is missing")
        return pq.read_table(path)


class SharedMedia:
    """Per-title cache of the decodes, so a title's video and each audio track are decoded once
    whatever stages run.

    ``decode_seconds`` records each decode's cost, so the runner can report it on the stage
    that happened to trigger it rather than hide it in that stage's own time. ``planned``: the
    stages this title run will run, when the runner knows them; a stage uses it to decide whether
    a decode is worth keeping for a later one (:meth:`will_run`).
    """

    def __init__(self, work_dir: Path, planned: Iterable[str] | None = None):
        self.work_dir = work_dir
        self.planned = None if planned is None else frozenset(planned)
        self._visual: VisualPass | None = None
        self._visual_error: Exception | None = None
        self.decode_seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # stages of different concurrency groups may ask at once

    def visual(self, ctx: StageContext) -> VisualPass:
        with self._lock:
            return self._visual_pass(ctx)

    def _visual_pass(self, ctx: StageContext) -> VisualPass:
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

    def will_run(self, stage: str) -> bool | None:
        return None if self.planned is None else stage in self.planned

    def audio_track(
        self, ctx: StageContext, track: int, *, block_s: float = 600.0, loudness: bool = True, keep: bool = True
    ) -> TrackStream | PcmStream:
        """A new stream of one audio track, 16 kHz mono (the same samples, whichever way it is read).

        - A decode an earlier reader kept (spooled PCM, loudness, error counts) is replayed: no ffmpeg.
        - Else with ``loudness`` (the audio stage): one ffmpeg pass for the PCM and EBU R128, spooled
          into the work directory (streamed) when ``keep``, for a later reader.
        - Else (the cues stage, which needs only the PCM): the plain 16 kHz decode, not kept; a
          stage that knows the audio stage follows asks for ``loudness`` instead, so the title's
          track is still decoded once.
        ``block_s`` is only the reader's block length.
        """
        from prism.audio.pcm import PcmStream, TrackStream

        info = ctx.info.audio_tracks[track]
        stream = TrackStream(
            ctx.source, track, channels=info.channels, sample_rate=info.sample_rate, block_s=block_s,
            spool=self.work_dir / f"audio-{track}.f32",
        )  # fmt: skip
        if stream.spooled():
            return stream
        if not loudness:
            return PcmStream(ctx.source, track, block_s=block_s)
        if not keep:
            stream.spool = None
        return stream


OUTPUT_FORMATS = ("parquet", "json", "vtt", "srt", "jpg", "txt")


@dataclass(frozen=True)
class Output:
    """One file, or family of files (``path`` a glob such as ``keyframes/*.jpg``), a stage writes.

    ``schema`` (Parquet only) is the pyarrow schema the stage writes with: its column names,
    order and types, and the metadata keys it lists, are what every written file must have. A
    declared ``list<T>`` column also accepts a ``fixed_size_list<T>[n]`` of any ``n`` (vector
    columns whose size depends on the model).
    """

    path: str
    format: str
    schema: pa.Schema | None = None
    description: str = ""
    show: tuple[str, ...] = ()  # Parquet columns ``prism show`` prints (and a ``spans`` lane's section lists)

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"output {self.path}: format must be one of {OUTPUT_FORMATS}, got {self.format!r}")
        if (self.schema is not None) != (self.format == "parquet"):
            raise ValueError(f"output {self.path}: a Parquet output declares its schema, other formats none")
        if self.show and self.schema is None:
            raise ValueError(f"output {self.path}: only Parquet outputs have columns to show")

    def matches(self, relative: str) -> bool:
        return fnmatch.fnmatchcase(relative, self.path)


LANE_KINDS = ("spans", "shots", "cues", "audio")


@dataclass(frozen=True)
class ReportLane:
    """How the HTML report draws a stage on its timeline, and lists it in a section of its own.

    ``spans`` (the default) draws each row of the Parquet ``output`` from ``start`` to ``end``,
    one colour per value of ``label``, and lists the rows (the output's ``show`` columns) below
    the timeline. ``shots``, ``cues`` and ``audio`` are the report's own drawings of the built-in
    stages. Lanes are drawn in ``order``, then by stage name.
    """

    output: str = ""
    label: str = ""
    start: str = "start_s"
    end: str = "end_s"
    title: str = ""  # the lane's name on the timeline; "" = the stage name
    kind: str = "spans"
    order: int = 100

    def __post_init__(self) -> None:
        if self.kind not in LANE_KINDS:
            raise ValueError(f"report lane kind must be one of {LANE_KINDS}, got {self.kind!r}")
        if self.kind == "spans" and not self.output:
            raise ValueError("a spans report lane names the Parquet output it draws")


class Stage(ABC):
    """Base class of every stage; see the module docstring."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type] = NoParams
    # Parameters that change how fast a stage runs, not what it outputs (device, batch size,
    # threads): recorded in the manifest but left out of the fingerprint, so they never force a rerun.
    execution_params: ClassVar[frozenset[str]] = frozenset()
    # What the stage writes; () = undeclared (nothing is checked, nothing is listed).
    outputs: ClassVar[tuple[Output, ...]] = ()
    report_lane: ClassVar[ReportLane | None] = None
    # Where the stage comes in the report and ``prism show`` (then by name); not the run order.
    display_order: ClassVar[int] = 100
    # Stages of different groups run side by side within a title (prism/schedule.py): the audio
    # stage has its own, so ASR overlaps the visual decode and models; one group runs in order.
    concurrency: ClassVar[str] = "visual"

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = make_params(self.Params, params or {}, self.name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__ and not getattr(cls.run, "_checks_outputs", False):
            cls.run = _checking_outputs(cls.run)  # type: ignore[method-assign,assignment]

    @classmethod
    def output(cls, path: str) -> Output:
        """The declaration of the output ``path`` (a file of a declared family matches it)."""
        for declared in cls.outputs:
            if declared.path == path or declared.matches(path):
                return declared
        raise KeyError(f"stage {cls.name!r} declares no output {path!r}; declared: {[o.path for o in cls.outputs]}")

    def write_table(
        self, ctx: StageContext, path: str, rows: list[dict[str, Any]] | dict[str, Any] | pa.Table
    ) -> pa.Table:
        """Write the declared Parquet output ``path`` into staging, built with its declared schema."""
        import pyarrow as pa

        from prism.artifacts import write_parquet

        schema = self.output(path).schema
        if schema is None:
            raise TypeError(f"stage {self.name!r}: output {path} is not Parquet")
        if isinstance(rows, pa.Table):
            table = rows
        elif isinstance(rows, dict):
            table = pa.Table.from_pydict(rows, schema=schema)
        else:
            table = pa.Table.from_pylist(rows, schema=schema)
        check_schema(self.name, path, schema, table.schema)
        write_parquet(ctx.staging / path, table)
        return table

    def check_outputs(self, staging: Path, result: StageResult) -> None:
        """Raise ``ArtifactSchemaError`` unless every output of ``result`` is declared and each
        declared Parquet file has its declared schema. Stages that declare nothing are not checked."""
        if not self.outputs or result.status != "succeeded":
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        for relative in result.outputs:
            try:
                declared = self.output(relative)
            except KeyError as exc:
                raise ArtifactSchemaError(f"stage {self.name}: {relative} is not a declared output") from exc
            if declared.schema is None or not (staging / relative).is_file():
                continue
            try:
                actual = pq.read_schema(staging / relative)
            except (OSError, pa.ArrowException) as exc:
                raise ArtifactSchemaError(f"stage {self.name}: {relative} is not readable Parquet: {exc}") from exc
            check_schema(self.name, relative, declared.schema, actual)

    @abstractmethod
    def model(self) -> ModelInfo:
        """Identity of the model/algorithm; part of the skip fingerprint."""

    def check_config(self) -> None:
        """Raise ConfigError naming the setting when this stage's configuration cannot work on this
        machine (a model location that does not resolve). The runner asks every stage it builds
        before it touches any title, so a typo is exit 2, not a failed title."""
        return None

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


def _checking_outputs(
    run: Callable[[Stage, StageContext], StageResult],
) -> Callable[[Stage, StageContext], StageResult]:
    """Wrap a stage's ``run`` so what it returns is checked against its declared outputs."""

    @functools.wraps(run)
    def checked(self: Stage, ctx: StageContext) -> StageResult:
        result = run(self, ctx)
        if isinstance(result, StageResult):
            self.check_outputs(ctx.staging, result)
        return result

    checked._checks_outputs = True  # type: ignore[attr-defined]
    return checked


def type_name(t: pa.DataType) -> str:
    """A column type as the docs write it: ``int32``, ``float64``, ``string``, ``list<float32>``."""
    import pyarrow as pa

    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    return str(t)


def _type_matches(declared: pa.DataType, actual: pa.DataType) -> bool:
    import pyarrow as pa

    if declared.equals(actual):
        return True
    return (
        pa.types.is_list(declared)
        and pa.types.is_fixed_size_list(actual)
        and _type_matches(declared.value_type, actual.value_type)
    )


def check_schema(stage: str, path: str, declared: pa.Schema, actual: pa.Schema) -> None:
    """Raise ``ArtifactSchemaError`` naming every difference between a file's schema and its declaration."""
    problems = []
    names, wanted = actual.names, declared.names
    if missing := [n for n in wanted if n not in names]:
        problems.append(f"missing column(s) {missing}")
    if extra := [n for n in names if n not in wanted]:
        problems.append(f"undeclared column(s) {extra}")
    for field_ in declared:
        if field_.name in names and not _type_matches(field_.type, actual.field(field_.name).type):
            got = type_name(actual.field(field_.name).type)
            problems.append(f"column {field_.name!r} is {got}, declared {type_name(field_.type)}")
    if not problems and [n for n in names if n in wanted] != list(wanted):
        problems.append(f"columns in order {names}, declared {wanted}")
    have = actual.metadata or {}
    for key, value in (declared.metadata or {}).items():
        if have.get(key) != value:
            problems.append(f"metadata {key.decode()}={value.decode()} missing")
    if problems:
        raise ArtifactSchemaError(f"stage {stage}: {path} does not match its declared schema: {'; '.join(problems)}")


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
    check_declarations(cls)
    _REGISTRY[cls.name] = cls
    return cls


def check_declarations(cls: type[Stage]) -> None:
    """Refuse declarations that contradict each other: a shown or drawn file the stage does not
    declare, a column its schema does not have."""
    parquet = {o.path: o.schema for o in cls.outputs if o.schema is not None}
    paths = [o.path for o in cls.outputs]
    if len(set(paths)) != len(paths):
        raise ValueError(f"stage {cls.name!r}: outputs {paths} repeat")

    def columns(path: str, wanted: list[str], what: str) -> None:
        if path not in parquet:
            raise ValueError(f"stage {cls.name!r}: {what} reads {path}, which is not a declared Parquet output")
        if missing := [c for c in wanted if c not in parquet[path].names]:
            raise ValueError(f"stage {cls.name!r}: {what} names column(s) {missing} that {path} does not declare")

    for output in cls.outputs:
        if output.show:
            columns(output.path, list(output.show), "show")
    lane = cls.report_lane
    if lane is not None and lane.kind == "spans":
        columns(lane.output, [c for c in (lane.start, lane.end, lane.label) if c], "report_lane")


_plugins_loaded = False


def registry() -> dict[str, type[Stage]]:
    """All stages: the built-in ones plus those other packages declare as ``prism.stages`` entry points."""
    global _plugins_loaded
    import prism.stages  # registers the built-in stages

    if not _plugins_loaded:
        _plugins_loaded = True
        for module in pkgutil.iter_modules(prism.stages.__path__):  # a new stage file needs no import line
            importlib.import_module(f"prism.stages.{module.name}")
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
