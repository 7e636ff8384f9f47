"""Shared fixtures: generated media (never downloaded) and a guard against logged errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from prism.synth import Shot, Title, Truth, build_title, ffmpeg, sample_title


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def sample_video(media_dir) -> tuple[Path, Truth]:
    """The demo title: cuts, a dissolve, a fade through black, black, frozen and silent spans."""
    path = media_dir / "sample.mp4"
    return path, build_title(sample_title(), path)


@pytest.fixture(scope="session")
def make_video(media_dir):
    """Build a custom Title once per session and cache it by name."""
    cache: dict[str, tuple[Path, Truth]] = {}

    def make(name: str, title: Title, **kwargs) -> tuple[Path, Truth]:
        if name not in cache:
            path = media_dir / name
            cache[name] = (path, build_title(title, path, **kwargs))
        return cache[name]

    return make


# Fixtures that run real models over generated media, or a whole pipeline, once per session or module: tens of
# seconds before the first test that asks for one. Every test using one is `slow` (left out by `-m "not slow"`),
# whatever its own call costs; tests slow on their own carry @pytest.mark.slow. Names are looked up per test, so
# they must stay unique across the suite.
SLOW_FIXTURES = frozenset(
    {"sample_run", "container_run", "full_run", "silent_run", "script_run", "dialogue", "pipeline"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_logged_errors(caplog):
    """Like PySceneDetect's suite: any ERROR logged during a test fails it, unless the test expects it."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    if errors:  # a test that expects an error log calls caplog.clear() after checking it
        pytest.fail(f"unexpected ERROR log: {errors[0].getMessage()}")


@pytest.fixture(scope="session")
def sample_run(sample_video, tmp_path_factory):
    """The sample title through shots, keyframes and cues once; tests read its artifacts."""
    from prism.runner import Runner

    path, truth = sample_video
    out = tmp_path_factory.mktemp("sample-run")
    [outcome] = Runner(out).run([path], ["shots", "keyframes", "cues"])
    return out, truth, outcome


# One small title in the containers and timestamp layouts real deliveries come in: MPEG-TS (no
# index, audio ahead of video), Matroska/WebM, and 1000 s start offsets (broadcast captures).
CONTAINER_TITLE = Title(
    [Shot("testsrc2", 2.0), Shot("mandelbrot", 2.0), Shot("life", 2.0)], width=160, height=90, silences=[(3.0, 4.0)]
)
CONTAINER_VARIANTS = {  # name -> (extension, ffmpeg output args from the MP4 original)
    "mkv": ("mkv", ["-c", "copy"]),
    "webm": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "32", "-b:v", "0",
                      "-g", "50", "-c:a", "libopus"]),
    "ts": ("ts", ["-c", "copy"]),
    "ts-offset": ("ts", ["-c", "copy", "-output_ts_offset", "1000"]),
    "mp4-offset": ("mp4", ["-c", "copy", "-output_ts_offset", "1000"]),
}  # fmt: skip


@pytest.fixture(scope="session")
def container_video(make_video, media_dir):
    """``container_video(name)``: CONTAINER_TITLE remuxed (or re-encoded) as CONTAINER_VARIANTS[name]."""
    cache: dict[str, tuple[Path, Truth]] = {}

    def make(name: str) -> tuple[Path, Truth]:
        if name not in cache:
            src, truth = make_video("container.mp4", CONTAINER_TITLE)
            ext, args = CONTAINER_VARIANTS[name]
            out = media_dir / f"ctr-{name}.{ext}"
            ffmpeg("-i", str(src), "-map", "0", *args, str(out))
            cache[name] = (out, truth)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def container_run(container_video, tmp_path_factory):
    """``container_run(name)``: that variant through shots, keyframes and cues once per session."""
    from prism.runner import Runner

    cache: dict[str, tuple] = {}

    def run(name: str):
        if name not in cache:
            path, truth = container_video(name)
            out = tmp_path_factory.mktemp(f"run-{name}")
            [outcome] = Runner(out).run([path], ["shots", "keyframes", "cues"])
            cache[name] = (out / "titles" / path.stem, path, truth, outcome)
        return cache[name]

    return run


def _cheap_stages_module():
    """tests/cheap_stages.py, loaded once under one name (a subprocess imports it by path too)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("prism_test_cheap_stages", Path(__file__).parent / "cheap_stages.py")
    if spec.name not in sys.modules:
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
        spec.loader.exec_module(module)
    return sys.modules[spec.name]


@pytest.fixture
def cheap_stages(monkeypatch):
    """``parts`` (nested files plus an index) -> ``tally`` (reads the index); see tests/cheap_stages.py."""
    from prism.stages import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return _cheap_stages_module().register_cheap_stages()
