"""The delivery contract: which objects under the input prefix are titles, and which file of each to process.

An environment names its upstream's layout (``cdk/config.py`` ``DeliveryLayout``, passed to
``discover`` as ``PRISM_DELIVERY``) as a key pattern relative to the input prefix:

- ``{title_id}`` (required): the title's id (made S3-safe by :func:`prism.artifacts.title_id_for`);
- ``{rendition}``: which encode of the title this file is (``1080p``, ``2160p``, ``hd``), no ``_`` or ``/``;
- ``{name}``: any file name part, no ``/``; ``{ext}``: the extension; ``{path}``: any folders (or none).

Examples: ``{title_id}_{rendition}.{ext}`` (``MOV0001_1080p.mp4``), ``{title_id}/{name}.{ext}``
(``MOV0001/video.mp4``), ``{path}{title_id}.{ext}`` (a file per title anywhere: the old rule).

Of a title's matching files the one processed is the first of ``renditions`` (a preference list)
present, else the highest resolution its rendition (or name) states (``2160p`` > ``1080p``,
``1920x1080``; ``4k``/``uhd``, ``fhd``/``hd``/``sd``), else the largest file. Never titles: keys that do not
match the pattern or lack a video suffix, keys matching an ``ignore`` glob, and everything in a
folder below the prefix that holds a streaming manifest (``.m3u8``, ``.mpd``, ``.ism``/``.ismc``):
packaged HLS, DASH and CMAF segments and their init files (so a title's own video never sits in
its packaged folder).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from prism.artifacts import title_id_for

FIELDS = {
    "title_id": r"(?P<title_id>[^/]+?)",
    "rendition": r"(?P<rendition>[^/_]+)",
    "name": r"(?P<name>[^/]+?)",
    "ext": r"(?P<ext>[^/.]+)",
    "path": r"(?P<path>(?:[^/]+/)*)",
}
MANIFEST_SUFFIXES = (".m3u8", ".mpd", ".ism", ".ismc")
# File names that are never a title even outside a packaged folder: init segments and numbered media segments.
DEFAULT_IGNORE = (
    "init.*", "init[-_]*", "*[-_.]init.*", "*.m4s", "*.cmf[va]",
    "seg[0-9]*", "seg[-_][0-9]*", "*[-_]seg[-_][0-9]*", "segment[0-9]*", "segment[-_][0-9]*", "*[-_]segment[-_][0-9]*",
    "chunk[-_]*[0-9].*", "*[-_]chunk[-_]*[0-9].*", "frag[-_][0-9]*", "*[-_]frag[-_][0-9]*",
)  # fmt: skip
NAMED_HEIGHTS = {"8k": 4320, "uhd": 2160, "4k": 2160, "qhd": 1440, "fhd": 1080, "hd": 720, "sd": 480}


class DeliveryError(ValueError):
    """A layout that cannot be used (bad pattern, unknown field, no ``{title_id}``)."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a key pattern; raises :class:`DeliveryError` naming what is wrong."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    regex, seen = [], set()
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name not in FIELDS:
                raise DeliveryError(f"delivery pattern {pattern!r}: unknown field {part}; use {sorted(FIELDS)}")
            if name in seen:
                raise DeliveryError(f"delivery pattern {pattern!r}: {part} appears twice")
            seen.add(name)
            regex.append(FIELDS[name])
        elif "{" in part or "}" in part:
            raise DeliveryError(f"delivery pattern {pattern!r}: unbalanced braces")
        else:
            regex.append(re.escape(part))
    if "title_id" not in seen:
        raise DeliveryError(f"delivery pattern {pattern!r} has no {{title_id}}")
    return re.compile("".join(regex))


@dataclass(frozen=True)
class Delivery:
    """One environment's delivery layout (see module docstring); ``from_json`` reads ``PRISM_DELIVERY``."""

    pattern: str = "{path}{title_id}.{ext}"
    renditions: tuple[str, ...] = ()  # preference order, e.g. ("2160p", "1080p"); () = the highest resolution
    # fnmatch globs, case-insensitive: on the file name, or on the key relative to the prefix when a glob has a "/"
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    video_suffixes: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".mxf")
    # The lowest total bitrate of a delivered rendition: size / bitrate bounds a title's duration from above, and
    # the duration sets its jobs' timeouts (discover cannot run ffprobe; a ranged read of the moov box could).
    min_bitrate_kbps: int = 2000
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_pattern(self.pattern))
        if not self.video_suffixes or not all(s.startswith(".") for s in self.video_suffixes):
            raise DeliveryError(f"video_suffixes must be extensions such as '.mp4', got {self.video_suffixes}")
        if self.min_bitrate_kbps < 1:
            raise DeliveryError(f"min_bitrate_kbps must be >= 1, got {self.min_bitrate_kbps}")

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Delivery:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "renditions": list(self.renditions), "ignore": list(self.ignore),
                "video_suffixes": list(self.video_suffixes), "min_bitrate_kbps": self.min_bitrate_kbps}  # fmt: skip

    def duration_bound_s(self, size: int) -> float:
        """The longest the title of a ``size``-byte file can be, at ``min_bitrate_kbps``."""
        return size * 8 / (self.min_bitrate_kbps * 1000)

    def parse(self, relative_key: str) -> tuple[str, str] | None:
        """``(title_id, rendition)`` of a key (relative to the input prefix) that is a title's video, else None."""
        lower = relative_key.lower()
        if not lower.endswith(tuple(s.lower() for s in self.video_suffixes)):
            return None
        name = lower.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatchcase(lower if "/" in glob else name, glob.lower()) for glob in self.ignore):
            return None
        match = self.regex.fullmatch(relative_key)
        if match is None:
            return None
        fields = match.groupdict()
        return title_id_for(fields["title_id"] + ".x"), fields.get("rendition") or fields.get("name") or ""

    def rank(self, rendition: str, size: int) -> tuple[int, int, int]:
        """Sort key of one rendition of a title: the largest is the one processed."""
        lower = rendition.lower()
        preferred = [r.lower() for r in self.renditions]
        preference = len(preferred) - preferred.index(lower) if lower in preferred else 0
        return preference, resolution(rendition), size

    def titles(self, objects: list[dict[str, Any]], prefix: str) -> tuple[dict[str, dict[str, Any]], int]:
        """``(title id -> the object to process, objects ignored)`` of a listing (``list_objects_v2`` contents)."""
        packaged = {folder for o in objects if o["Key"].lower().endswith(MANIFEST_SUFFIXES)
                    for folder in [o["Key"].rsplit("/", 1)[0] + "/"] if len(folder) > len(prefix)}  # fmt: skip
        chosen: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        ignored = 0
        for obj in objects:
            key = obj["Key"]
            parsed = None if any(key.startswith(folder) for folder in packaged) else self.parse(key[len(prefix) :])
            if parsed is None:
                ignored += 1
                continue
            title_id, rendition = parsed
            rank = self.rank(rendition, obj.get("Size", 0))
            if title_id not in chosen or (rank, obj["LastModified"]) > (
                chosen[title_id][0],
                chosen[title_id][1]["LastModified"],
            ):
                chosen[title_id] = (rank, obj)
        return {title_id: obj for title_id, (_, obj) in chosen.items()}, ignored


def resolution(text: str) -> int:
    """The picture height a rendition or file name states (``1080p``, ``1920x1080``, ``4k``), 0 when none."""
    lower = text.lower()
    if sized := re.search(r"(\d{3,4})\s*x\s*(\d{3,4})", lower):
        return int(sized.group(2))
    if height := re.search(r"(?<!\d)(\d{3,4})[pi](?![a-z])", lower):
        return int(height.group(1))
    for word in re.split(r"[^a-z0-9]+", lower):
        if word in NAMED_HEIGHTS:
            return NAMED_HEIGHTS[word]
    return 0
