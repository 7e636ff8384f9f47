"""Media layer: locate ffmpeg, probe a file, decode it once for all visual analysis, seek keyframes."""

from prism.media.decode import AudioPCM, VisualPass, audio_blocks, decode_audio, decode_visual, extract_frame
from prism.media.probe import AudioTrack, MediaInfo, probe
from prism.media.tools import ffmpeg_exe, ffprobe_exe

__all__ = [
    "AudioPCM",
    "AudioTrack",
    "audio_blocks",
    "MediaInfo",
    "VisualPass",
    "decode_audio",
    "decode_visual",
    "extract_frame",
    "ffmpeg_exe",
    "ffprobe_exe",
    "probe",
]
