"""Generate test media with known ground truth using ffmpeg's own sources (no download).

Used by ``prism sample``, the tests and the benchmarks. A title is a list of shots, each a
different ffmpeg source so consecutive shots really differ, joined by hard cuts, dissolves or
fades through black, optionally with black or frozen spans, over a tone with silent gaps.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from prism.media.tools import ffmpeg_exe

# Visually distinct moving sources; {w}x{h} and {r} are filled in.
SOURCES = {
    "testsrc2": "testsrc2=size={w}x{h}:rate={r}",
    "mandelbrot": "mandelbrot=size={w}x{h}:rate={r}",
    "life": "life=size={w}x{h}:rate={r}:mold=10:life_color=#00ff00:death_color=#aa0000:ratio=0.3:seed=7",
    "smptehdbars": "smptehdbars=size={w}x{h}:rate={r}",
    "gradients": "gradients=size={w}x{h}:rate={r}:speed=0.02:seed=3",
    "cellauto": "cellauto=size={w}x{h}:rate={r}:rule=110:seed=5",
    "sierpinski": "sierpinski=size={w}x{h}:rate={r}:seed=11",
    "colorchart": "colorchart=rate={r}:patch_size=64x64,scale={w}:{h}",
    "orange": "color=c=0xd2691e:size={w}x{h}:rate={r},drawgrid=w=80:h=80:t=6:c=white",
    "blue": "color=c=0x1e3cd2:size={w}x{h}:rate={r},drawbox=x=t*60:y=100:w=160:h=160:c=yellow:t=fill",
    # hard negatives: continuous shots that change a lot from frame to frame
    "pan": "testsrc2=size={w4}x{h}:rate={r},crop={w}:{h}:x='min(t*{w}*1.5,3*{w})':y=0",
    "fastmotion": "cellauto=size={w}x{h}:rate={r}:rule=30:scroll=1,drawbox=x='mod(t*{w}*2,{w})':y=0:w={w8}:h={h}:c=white:t=fill",
}


@dataclass(frozen=True)
class Shot:
    source: str
    duration_s: float
    transition_in: str = "cut"  # cut | dissolve | fadeblack (ignored for the first shot)
    transition_s: float = 0.0
    freeze_tail_s: float = 0.0  # hold the last frame this long (a frozen span)
    flashes_s: tuple[float, ...] = ()  # camera flashes: 2 near-white frames at these times into the shot


@dataclass
class Title:
    shots: list[Shot]
    width: int = 320
    height: int = 180
    fps: float = 25.0
    black_after: dict[int, float] = field(default_factory=dict)  # shot index -> seconds of black after it
    audio: bool = True
    silences: list[tuple[float, float]] = field(default_factory=list)  # (start_s, end_s) of digital silence
    tone_hz: float = 440.0


@dataclass(frozen=True)
class Truth:
    """Ground truth of a generated title, in output frames."""

    cuts: list[int]  # first frame of each shot that starts with a hard cut
    gradual: list[tuple[int, int]]  # [start, end) frames of each gradual transition
    black: list[tuple[int, int]]
    frozen: list[tuple[int, int]]
    frame_count: int
    fps: float


def build_title(title: Title, out: str | Path, *, codec_args: list[str] | None = None) -> Truth:
    """Render ``title`` to ``out`` and return its ground truth."""
    out = Path(out)
    w, h, r = title.width, title.height, title.fps
    inputs: list[str] = []
    graph: list[str] = []
    pieces: list[Shot] = []
    for i, shot in enumerate(title.shots):
        pieces.append(shot)
        if i in title.black_after:
            pieces.append(Shot("black", title.black_after[i]))
    cuts: list[int] = []
    gradual: list[tuple[int, int]] = []
    black: list[tuple[int, int]] = []
    frozen: list[tuple[int, int]] = []
    length = 0  # frames in the accumulated chain
    acc = ""
    for i, piece in enumerate(pieces):
        frames = round(piece.duration_s * r)
        if piece.source == "black":
            src = "color=c=black:size={w}x{h}:rate={r}"
        else:  # temporal grain, as real footage has: only a frozen frame repeats exactly
            src = SOURCES[piece.source] + ",noise=alls=8:allf=t+u"
        for at in piece.flashes_s:
            src += f",drawbox=c=white@0.85:t=fill:enable='between(t,{at},{at + 1.5 / r})'"
        inputs += ["-f", "lavfi", "-i", src.format(w=w, h=h, r=r, w4=4 * w, w8=max(8, w // 8))]
        # The sources already stamp frame N at N/r. No setpts here: from ffmpeg 6.1 on (imageio-ffmpeg
        # 0.6.0 ships 7.0) setpts marks the rate unknown, and xfade/tpad need a constant one.
        chain = f"[{i}:v]trim=end_frame={frames},settb=AVTB,format=yuv420p,setsar=1"
        freeze = round(piece.freeze_tail_s * r)
        if freeze:
            chain += f",tpad=stop_mode=clone:stop={freeze}"
        graph.append(f"{chain}[s{i}]")
        hard = i > 0 and (piece.transition_in == "cut" or "black" in (piece.source, pieces[i - 1].source))
        if i == 0:
            acc, start = "s0", 0
        elif hard:
            graph.append(f"[{acc}][s{i}]concat=n=2:v=1:a=0,settb=AVTB[c{i}]")
            acc, start = f"c{i}", length
            cuts.append(length)
        else:
            overlap = round(piece.transition_s * r)
            kind = "fade" if piece.transition_in == "dissolve" else "fadeblack"
            offset = (length - overlap) / r
            graph.append(f"[{acc}][s{i}]xfade=transition={kind}:duration={overlap / r}:offset={offset}[c{i}]")
            acc, start = f"c{i}", length - overlap
            gradual.append((start, length))
        if piece.source == "black":
            black.append((start, start + frames))
        if freeze:
            frozen.append((start + frames - 1, start + frames + freeze))
        length = start + frames + freeze
    duration = length / r
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs]
    if title.audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={title.tone_hz}:sample_rate=48000:duration={duration}"]
        audio_filter = "volume=0.5"
        if title.silences:
            cond = "+".join(f"between(t,{a},{b})" for a, b in title.silences)
            audio_filter += f",volume=volume=0:enable='{cond}'"
        graph.append(f"[{len(pieces)}:a]{audio_filter}[aout]")
    cmd += ["-filter_complex", ";".join(graph), "-map", f"[{acc}]"]
    if title.audio:
        cmd += ["-map", "[aout]", "-c:a", "aac", "-b:a", "96k"]
    cmd += codec_args or ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-g", "50"]
    cmd += ["-pix_fmt", "yuv420p", "-r", str(r), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not build {out}: {proc.stderr.strip()[-2000:]}")
    return Truth(cuts, gradual, black, frozen, length, r)


def sample_title() -> Title:
    """The demo title: 8 shots, cuts, a dissolve, a fade through black, black and frozen spans, silence."""
    return Title(
        shots=[
            Shot("testsrc2", 3.0),
            Shot("mandelbrot", 2.5),
            Shot("life", 3.0, "dissolve", 1.0),
            Shot("smptehdbars", 2.0, freeze_tail_s=2.0),
            Shot("gradients", 3.0),
            Shot("orange", 2.5),
            Shot("blue", 3.0, "fadeblack", 1.0),
            Shot("sierpinski", 2.5),
        ],
        black_after={4: 1.0},
        silences=[(6.0, 8.0), (20.0, 21.5)],
    )


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with ``args`` (for building test media), raising with its message on failure."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
