"""Subtitle rules for localization: Korean line length, reading speed, cues snapped to shot changes."""

from __future__ import annotations

import pytest

from prism.audio.speech import Segment, Word
from prism.audio.subtitles import CueRules, build_cues, rules_for, snap_to_shots

FPS = 24.0
WINDOW = 12 / FPS


def _segment(words: list[tuple[float, float, str]], speaker: str = "SPEAKER_00") -> Segment:
    ws = [Word(a, b, w, 0.9, speaker) for a, b, w in words]
    return Segment(ws[0].start, ws[-1].end, "".join(w.word for w in ws).strip(), -0.2, 0.01, ws, speaker)


def _korean(start: float, text: str, per_word: float = 0.45, speaker: str = "SPEAKER_00") -> Segment:
    words, t = [], start
    for w in text.split():
        words.append((t, t + per_word, " " + w))
        t += per_word + 0.05
    return _segment(words, speaker)


KOREAN = "도착하면 전화해 주세요. 공연 표를 잊지 마세요. 물론이죠. 일곱 시에 강가의 오래된 다리에서 만나요."


def test_korean_lines_hold_16_characters_latin_42():
    ko = rules_for("ko")
    assert (ko.max_chars, ko.max_cps, ko.spaced) == (16, 12.0, True)
    assert (rules_for("en").max_chars, rules_for(None).max_chars, rules_for("ja").spaced) == (42, 42, False)
    assert rules_for("ko", max_chars=20).max_chars == 20
    cues = build_cues([_korean(1.0, KOREAN)], ko)
    assert len(cues) >= 2
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2 and all(len(line) <= 16 for line in cue.lines), cue.lines
    assert "".join("".join(c.lines) for c in cues).replace(" ", "") == KOREAN.replace(" ", "")
    latin = build_cues([_korean(1.0, KOREAN)], rules_for("en"))  # 42-character lines: fewer, longer cues
    assert max(len(line) for c in latin for line in c.lines) > 16


def test_unspaced_scripts_break_between_any_tokens():
    words = [(i * 0.2, i * 0.2 + 0.18, ch) for i, ch in enumerate("今日はとても寒いので暖かいコートを着てください")]
    for cue in build_cues([_segment(words)], rules_for("ja")):
        assert all(len(line) <= 13 for line in cue.lines), cue.lines


def test_fast_speech_is_held_for_reading_speed_into_the_pause():
    rules = rules_for("ko")
    fast = _korean(1.0, "공연 표를 잊지 마세요 꼭이요", per_word=0.12)  # ~14 characters in 0.8 s
    later = _korean(6.0, "물론이죠")
    cues = build_cues([fast, later], rules)
    assert cues[0].cps <= rules.max_cps + 1e-6 and cues[0].end <= cues[1].start - rules.min_gap_s
    reply = _korean(fast.end + 0.3, "물론이죠", speaker="SPEAKER_01")  # an immediate reply: no pause to hold into
    squeezed = build_cues([fast, reply], rules)
    assert squeezed[0].cps > rules.max_cps and squeezed[0].end <= squeezed[1].start


@pytest.mark.parametrize("offset", [-0.4, -0.2, 0.1, 0.3])
def test_cue_edges_near_a_shot_change_move_onto_it(offset):
    rules = rules_for("ko")
    cues = build_cues([_korean(2.0, "도착하면 전화해 주세요."), _korean(6.0, "공연 표를 잊지 마세요.")], rules)
    changes = [cues[0].start + offset, cues[0].end + offset, cues[1].start - offset, 20.0]
    moved = snap_to_shots(cues, changes, FPS, 12, rules)
    assert moved >= 1
    for cue in cues:
        for c in changes:  # no cue starts just before/after a change, or ends just before/after one
            assert not (cue.start < c < cue.start + WINDOW) and not (cue.start - WINDOW < c < cue.start), (cue, c)
            assert not (cue.end - WINDOW < c < cue.end), (cue, c)
            assert not (cue.end < c < cue.end + WINDOW) or abs(c - 2 / FPS - cue.end) < 1e-6, (cue, c)
    assert cues[0].end <= cues[1].start - rules.min_gap_s


def test_changes_far_from_edges_leave_cues_alone():
    rules = CueRules()
    cues = build_cues([_korean(2.0, "도착하면 전화해 주세요.")], rules)
    before = [(c.start, c.end) for c in cues]
    assert snap_to_shots(cues, [0.5, (cues[0].start + cues[0].end) / 2, 30.0], FPS, 12, rules) == 0
    assert [(c.start, c.end) for c in cues] == before


def test_two_changes_around_one_edge_resolve_to_a_clear_position():
    """Changes 0.46 s before and 0.4 s after an out-cue, with the next cue right after it."""
    rules = rules_for("ko")
    cues = build_cues(
        [_korean(4.0, "도착하면 전화해 주세요. 공연 표를"), _korean(8.3, "물론이죠 만나요", speaker="SPEAKER_01")],
        rules,
    )
    end = cues[0].end
    window = 12 / 10.0
    changes = [end - 0.46, end + 0.4, cues[1].start + 2.0]
    snap_to_shots(cues, changes, 10.0, 12, rules)
    for cue in cues:
        for c in changes:
            assert not (cue.end - window < c < cue.end), (cue, c)
            assert not (cue.start - window < c < cue.start) and not (cue.start < c < cue.start + window), (cue, c)
