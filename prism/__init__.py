"""Prism: the shared video preprocessing layer (shots, keyframes, cues, audio, embeddings)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prism-video")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
