"""Probe a media file: duration, frame rate (constant or variable), size, rotation, codecs, audio tracks."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from prism.errors import MediaError
from prism.media.tools import ffmpeg_exe, ffprobe_exe, input_arg


@dataclass(frozen=True)
class AudioTrack:
    index: int  # position among the file's audio streams (ffmpeg's 0:a:N)
    codec: str
    sample_rate: int
    channels: int
    channel_layout: str | None = None
    language: str | None = None
    start_s: float | None = None  # source timestamp of the first sample (ffprobe start_time); None if unknown


@dataclass(frozen=True)
class VideoStream:
    codec: str
    width: int  # coded size
    height: int
    rotation: int  # degrees, as the display matrix says (0, 90, 180, 270)
    fps: float  # average frame rate
    nominal_fps: float  # r_frame_rate, the container's claim
    variable_frame_rate: bool
    frame_count: int | None
    pix_fmt: str | None = None
    start_s: float | None = None  # source timestamp of the first frame (ffprobe start_time); None if unknown
    duration_s: float | None = None  # the stream's own declared duration, when the container gives one

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height after rotation: what a viewer sees and what ffmpeg decodes to."""
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class MediaInfo:
    """What the container declares. Declared, not measured: durations and start times can lie
    (lying headers, truncated files); the stages take times from decoded frames instead."""

    path: str
    size_bytes: int
    format_name: str
    duration_s: float  # the container's duration (ffprobe format.duration)
    bit_rate: int | None
    video: VideoStream | None
    audio_tracks: tuple[AudioTrack, ...] = field(default_factory=tuple)
    start_s: float | None = None  # the container's start time (ffprobe format.start_time)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def origin_s(self) -> float:
        """Source timestamp of the title's time zero, as declared: the first video frame, else the
        earliest audio sample. The visual pass measures the real one (``VisualPass.origin_s``)."""
        if self.video is not None and self.video.start_s is not None:
            return self.video.start_s
        starts = [t.start_s for t in self.audio_tracks if t.start_s is not None]
        return min(starts) if starts else (self.start_s or 0.0)

    def audio_start_s(self, track: int, origin_s: float | None = None) -> float:
        """Where audio track ``track``'s first sample falls on the title clock (t=0 at the first
        video frame, ``origin_s`` when measured, else as declared): negative when the audio
        starts first (MPEG-TS, AAC priming), positive when it starts late. 0.0 when unknown."""
        start = self.audio_tracks[track].start_s if 0 <= track < len(self.audio_tracks) else None
        if start is None:
            return 0.0
        return start - (self.origin_s if origin_s is None else origin_s)

    def declared_video_duration_s(self) -> float:
        """The longest span the container claims for the picture, ignoring a start offset.

        Containers disagree on what ``duration`` means: MPEG-TS gives the span from the first
        timestamp, MP4 and Matroska the end timestamp counted from zero (so a 1000 s start offset
        makes a 4 s file "1004 s"). The stream's own duration, when present, is a span. MPEG-TS
        declares nothing: ffprobe estimates its durations from the timestamps at either end, which a
        splice (timestamps restarting) turns into nonsense, and a cut-off TS simply ends sooner.
        """
        if "mpegts" in self.format_name:
            return 0.0
        stream = self.video.duration_s if self.video is not None and self.video.duration_s else 0.0
        fmt = self.duration_s - max(self.start_s or 0.0, 0.0)
        return max(stream, fmt, 0.0)


def _rate(text: str | None) -> float:
    if not text or text in ("0/0", "N/A"):
        return 0.0
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return 0.0


def _seconds(text: str | None) -> float | None:
    """ffprobe's decimal seconds (``start_time``, ``duration``); None for N/A or missing."""
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(-float(side["rotation"]))) % 360
    rotate = (stream.get("tags") or {}).get("rotate")
    return int(rotate) % 360 if rotate else 0


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "file not found")
    if path.is_dir():
        raise MediaError(path, "is a directory, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")


def probe(path: str | Path) -> MediaInfo:
    """Read stream facts without decoding. Raises MediaError naming the file and the cause."""
    path = Path(path)
    _check_file(path)
    ffprobe = ffprobe_exe()
    if ffprobe is None:
        return _probe_with_ffmpeg(path)
    proc = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", input_arg(path)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        raise MediaError(path, f"not a media file ffmpeg can read ({_last_line(proc.stderr)})")
    data = json.loads(proc.stdout or "{}")
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    video = None
    audio: list[AudioTrack] = []
    for stream in streams:
        kind = stream.get("codec_type")
        disposition = stream.get("disposition") or {}
        if kind == "video" and video is None and not disposition.get("attached_pic"):
            avg = _rate(stream.get("avg_frame_rate"))
            nominal = _rate(stream.get("r_frame_rate"))
            nb = stream.get("nb_frames")
            video = VideoStream(
                codec=stream.get("codec_name", "unknown"),
                width=int(stream.get("width") or 0),
                height=int(stream.get("height") or 0),
                rotation=_rotation(stream),
                fps=avg or nominal,
                nominal_fps=nominal or avg,
                variable_frame_rate=bool(avg and nominal and abs(avg - nominal) / nominal > 0.01),
                frame_count=int(nb) if nb and str(nb).isdigit() else None,
                pix_fmt=stream.get("pix_fmt"),
                start_s=_seconds(stream.get("start_time")),
                duration_s=_seconds(stream.get("duration")),
            )
        elif kind == "audio":
            audio.append(
                AudioTrack(
                    index=len(audio),
                    codec=stream.get("codec_name", "unknown"),
                    sample_rate=int(stream.get("sample_rate") or 0),
                    channels=int(stream.get("channels") or 0),
                    channel_layout=stream.get("channel_layout"),
                    language=(stream.get("tags") or {}).get("language"),
                    start_s=_seconds(stream.get("start_time")),
                )
            )
    if video is None and not audio:
        raise MediaError(path, "no video or audio stream found")
    duration = _rate(fmt.get("duration")) or max((_rate(s.get("duration")) for s in streams), default=0.0)
    return MediaInfo(
        path=str(path),
        size_bytes=path.stat().st_size,
        format_name=fmt.get("format_name", "unknown"),
        duration_s=duration,
        bit_rate=int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        video=video,
        audio_tracks=tuple(audio),
        start_s=_seconds(fmt.get("start_time")),
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no diagnostic from ffmpeg"


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_START = re.compile(r"Duration: .*?, start: (-?[\d.]+)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"([\d.]+) fps")
_TBR = re.compile(r"([\d.]+k?) tbr")
_AUDIO = re.compile(r"Stream #\d+:\d+(?:\[\w+\])?(?:\((\w+)\))?: Audio: (\w+).*?, (\d+) Hz, ([\w.()]+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")


def _probe_with_ffmpeg(path: Path) -> MediaInfo:
    """Fallback for machines with only the ffmpeg binary (imageio-ffmpeg): parse ``ffmpeg -i``."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", input_arg(path)], capture_output=True, text=True, errors="replace"
    )
    text = proc.stderr
    if "Stream #" not in text:
        raise MediaError(path, f"not a media file ffmpeg can read ({_last_line(text)})")
    match = _DURATION.search(text)
    duration = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else 0.0
    video = None
    audio: list[AudioTrack] = []
    for line in text.splitlines():
        if video is None and (vm := _VIDEO.search(line)) and "attached pic" not in line:
            fps_m, tbr_m = _FPS.search(line), _TBR.search(line)
            fps = float(fps_m[1]) if fps_m else 0.0
            tbr = float(tbr_m[1].rstrip("k")) if tbr_m else fps
            rot = _ROTATION.search(text)
            video = VideoStream(
                codec=vm[1],
                width=int(vm[2]),
                height=int(vm[3]),
                rotation=int(round(-float(rot[1]))) % 360 if rot else 0,
                fps=fps or tbr,
                nominal_fps=tbr or fps,
                variable_frame_rate=bool(fps and tbr and abs(fps - tbr) / tbr > 0.01),
                frame_count=None,
            )
        elif am := _AUDIO.search(line):
            layout = am[4]
            channels = {"mono": 1, "stereo": 2, "5.1": 6, "5.1(side)": 6, "7.1": 8}.get(layout, 2)
            audio.append(AudioTrack(len(audio), am[2], int(am[3]), channels, layout, am[1]))
    if video is None and not audio:
        raise MediaError(path, "no video or audio stream found")
    start = _START.search(text)
    return MediaInfo(
        str(path),
        path.stat().st_size,
        "unknown",
        duration,
        None,
        video,
        tuple(audio),
        float(start[1]) if start else None,
    )
