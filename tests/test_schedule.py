"""Stage concurrency within one title: groups overlap, dependencies and optional waits hold, errors surface."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import pytest

from prism.artifacts import write_parquet
from prism.runner import Runner
from prism.schedule import run_stages
from prism.stages import base
from prism.stages.base import ModelInfo, Stage, StageResult, register


@dataclass
class Fake:
    name: str
    concurrency: str = "visual"
    requires: tuple[str, ...] = ()


def _stages(*fakes: Fake) -> dict[str, Fake]:
    return {f.name: f for f in fakes}


def test_two_groups_run_at_the_same_time():
    both = threading.Barrier(2, timeout=10)  # passes only if both stages are running at once
    stages = _stages(Fake("shots"), Fake("audio", "audio"))

    def run_one(stage, waiter):
        both.wait()
        return stage.name

    assert run_stages(stages, run_one) == ["shots", "audio"]


def test_without_overlap_one_stage_runs_at_a_time_in_order():
    running, seen = [], []
    lock = threading.Lock()
    stages = _stages(Fake("shots"), Fake("audio", "audio"), Fake("keyframes", requires=("shots",)))

    def run_one(stage, waiter):
        with lock:
            running.append(stage.name)
            seen.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(stage.name)
        return stage.name

    assert run_stages(stages, run_one, overlap=False) == ["shots", "audio", "keyframes"]
    assert seen == [1, 1, 1]


def test_without_overlap_waiting_for_a_later_stage_returns_at_once():
    stages = _stages(Fake("audio", "audio"), Fake("shots"))
    answers = []

    def run_one(stage, waiter):
        if stage.name == "audio":
            answers.append(waiter.wait_for("shots"))  # same thread, shots comes later: must not block
        else:
            answers.append(waiter.wait_for("audio"))
        return stage.name

    assert run_stages(stages, run_one, overlap=False) == ["audio", "shots"]
    assert answers == [False, True]


def test_a_stage_starts_only_after_what_it_requires_from_another_group():
    finished: dict[str, float] = {}
    started: dict[str, float] = {}
    stages = _stages(Fake("decode"), Fake("asr", "audio"), Fake("mix", "audio", requires=("decode",)))

    def run_one(stage, waiter):
        started[stage.name] = time.monotonic()
        time.sleep(0.2 if stage.name == "decode" else 0.01)
        finished[stage.name] = time.monotonic()
        return stage.name

    run_stages(stages, run_one)
    assert started["mix"] >= finished["decode"]
    assert started["asr"] < finished["decode"]  # asr did not wait for the other group


def test_wait_for_an_optional_input_in_another_group():
    stages = _stages(Fake("shots"), Fake("audio", "audio"))
    seen = {}

    def run_one(stage, waiter):
        if stage.name == "shots":
            time.sleep(0.2)
            seen["shots_done"] = time.monotonic()
        else:
            assert waiter.wait_for("shots") is True
            seen["audio_saw"] = time.monotonic()
            assert waiter.wait_for("embeddings") is False  # not in this run: no wait
        return stage.name

    run_stages(stages, run_one)
    assert seen["audio_saw"] >= seen["shots_done"]


def test_wait_for_never_deadlocks_on_its_own_group_or_a_dependent():
    stages = _stages(Fake("audio", "audio"), Fake("shots"), Fake("later", "audio"), Fake("dub", requires=("audio",)))
    answers = {}

    def run_one(stage, waiter):
        if stage.name == "audio":
            answers["same_group"] = waiter.wait_for("later")
            answers["dependent"] = waiter.wait_for("dub")
        return stage.name

    run_stages(stages, run_one)
    assert answers == {"same_group": False, "dependent": False}


def test_an_error_in_one_group_is_raised_after_the_other_group_finished():
    stages = _stages(Fake("shots"), Fake("keyframes", requires=("shots",)), Fake("audio", "audio"))
    ran = []

    def run_one(stage, waiter):
        if stage.name == "audio":
            raise OSError("disk full")
        time.sleep(0.05)
        ran.append(stage.name)
        return stage.name

    with pytest.raises(OSError, match="disk full"):
        run_stages(stages, run_one)
    assert ran == ["shots", "keyframes"]


@pytest.fixture
def side_by_side(monkeypatch):
    """Two test-only stages in different groups: ``slowvis`` writes marks.parquet after a delay,
    ``listener`` (its own group) records whether it overlapped it and reads marks.parquet once it waited."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    events: dict[str, float] = {}

    @register
    class SlowVisual(Stage):
        name = "slowvis"

        def model(self):
            return ModelInfo("slowvis", "1")

        def run(self, ctx):
            events["slowvis_start"] = time.monotonic()
            time.sleep(0.5)
            write_parquet(ctx.staging / "marks.parquet", pa.table({"t": [1.0, 2.0, 3.0]}))
            events["slowvis_end"] = time.monotonic()
            return StageResult(outputs=["marks.parquet"])

    @register
    class Listener(Stage):
        name = "listener"
        concurrency = "audio"

        def model(self):
            return ModelInfo("listener", "1")

        def run(self, ctx):
            events["listener_start"] = time.monotonic()
            waited = ctx.wait_for("slowvis")
            path = ctx.title_dir / "marks.parquet"
            count = len(ctx.read_table("marks.parquet")) if path.exists() else 0
            write_parquet(ctx.staging / "heard.parquet", pa.table({"marks": [count], "waited": [waited]}))
            return StageResult(outputs=["heard.parquet"], metrics={"marks": count})

    return events


def test_the_runner_overlaps_groups_and_the_waiting_stage_sees_the_published_file(sample_video, tmp_path, side_by_side):
    video, _ = sample_video
    title = Runner(tmp_path).run([video], ["slowvis", "listener"])[0]
    assert title.status == "succeeded", title.reason
    events = side_by_side
    assert events["listener_start"] < events["slowvis_end"]  # it started while slowvis was running
    manifest = json.loads((title.title_dir / "manifest.json").read_text())
    assert manifest["stages"]["listener"]["metrics"] == {"marks": 3}  # and read what slowvis published
    assert sorted(manifest["stages"]) == ["listener", "slowvis"]
    assert all(manifest["stages"][s]["status"] == "succeeded" for s in ("listener", "slowvis"))


def test_overlap_can_be_turned_off(sample_video, tmp_path, side_by_side, monkeypatch):
    monkeypatch.setenv("PRISM_OVERLAP_STAGES", "0")
    video, _ = sample_video
    title = Runner(tmp_path).run([video], ["slowvis", "listener"])[0]
    assert title.status == "succeeded", title.reason
    events = side_by_side
    assert events["listener_start"] >= events["slowvis_end"]


def test_a_fresh_run_of_shots_and_audio_snaps_subtitles_to_the_shots_of_the_same_run(sample_video, tmp_path):
    """The audio stage runs beside shots, so it must wait for shots.parquet before its subtitles:
    a first run sees every shot change, whichever thread is faster (it read none before the wait)."""
    video, truth = sample_video
    title = Runner(tmp_path, overlap=True).run([video], ["shots", "audio"])[0]
    assert title.status == "succeeded", title.reason
    manifest = json.loads((title.title_dir / "manifest.json").read_text())
    shots = manifest["stages"]["shots"]["metrics"]
    audio = manifest["stages"]["audio"]["metrics"]
    assert shots["shots"] >= 8  # the sample's cuts, dissolve and fade
    assert audio["subtitle_shot_changes"] == shots["shots"] - 1
