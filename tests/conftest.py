"""Shared fixtures: generated media (never downloaded) and a guard against logged errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from prism.synth import Title, Truth, build_title, sample_title


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
