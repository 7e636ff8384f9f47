"""Keyframes stage: full-resolution JPEGs of good, distinct frames away from transitions."""

from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from prism.media import decode_visual, ffmpeg_exe, probe
from prism.stages.keyframes import KeyframesParams, frame_scores, select_keyframes


def test_one_good_keyframe_per_visible_shot(sample_run):
    out, truth, _ = sample_run
    tdir = out / "titles" / "sample"
    shots = pq.read_table(tdir / "shots.parquet").to_pandas()
    kf = pq.read_table(tdir / "keyframes.parquet").to_pandas()
    black_shots = {i for i, r in shots.iterrows() if any(b[0] <= r.start_frame and r.end_frame <= b[1] + 2 for b in truth.black)}
    assert black_shots, "the sample has a black shot"
    assert set(kf.shot_index) == set(range(len(shots))) - black_shots
    for _, row in kf.iterrows():
        shot = shots.iloc[row.shot_index]
        assert shot.start_frame <= row.frame < shot.end_frame
        assert not shot.transition_start_frame <= row.frame < shot.transition_end_frame  # not inside a dissolve
        assert row.frame not in range(*truth.gradual[0]) and row.frame not in range(*truth.gradual[1])
        assert 0.0 <= row.quality <= 1.0 and row["rank"] == 0


def _frames_around(path, frame: int, width: int, height: int) -> np.ndarray:
    """Frames frame-2 .. frame+2 at full size, decoded exactly (test-only full decode)."""
    cmd = [
        ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", f"select='between(n,{frame - 2},{frame + 2})'",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(np.float32)


def test_keyframe_jpegs_are_full_resolution_and_show_their_frame(sample_run, sample_video):
    out, _, _ = sample_run
    tdir = out / "titles" / "sample"
    kf = pq.read_table(tdir / "keyframes.parquet").to_pandas()
    path, _ = sample_video
    for _, row in kf.iterrows():
        image = Image.open(tdir / row.path)
        assert image.format == "JPEG" and image.size == (row.width, row.height) == (320, 180)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        errors = [np.abs(pixels - f).mean() for f in _frames_around(path, row.frame, 320, 180)]
        assert errors[2] <= min(errors) + 1e-3, (row.frame, errors)  # ties only where the picture is frozen


def test_near_duplicates_are_not_repeated(sample_video, tmp_path):
    import pyarrow as pa

    path, _ = sample_video
    vp = decode_visual(path, probe(path), tmp_path)
    one_shot = pa.table(
        {"shot_index": [0], "start_frame": [0], "end_frame": [75], "duration_s": [3.0],
         "transition_start_frame": [0], "transition_end_frame": [0]}
    )  # fmt: skip
    quality = frame_scores(vp)["quality"]
    many = select_keyframes(vp, one_shot, KeyframesParams(max_per_shot=3, seconds_per_keyframe=1.0, duplicate_threshold=0.0), quality)
    assert len(many) == 3
    strict = select_keyframes(vp, one_shot, KeyframesParams(max_per_shot=3, seconds_per_keyframe=1.0, duplicate_threshold=255.0), quality)
    assert len(strict) == 1  # everything after the first pick counts as a duplicate
