"""benchmarks.real_shots: the baselines it reports beside Prism, and its markdown section."""

from __future__ import annotations

import numpy as np

from benchmarks.real_shots import METHODS, _before, _raw_transnetv2, section


def test_baselines_on_two_close_cuts():
    single = np.zeros(60, np.float32)
    many = np.zeros(60, np.float32)
    single[[20, 22]] = 0.9
    many[19:24] = 0.5
    assert _raw_transnetv2(single) == [20, 22]  # a scene ends where single first exceeds 0.5
    assert _before(single, many) == [21]  # the old extent swallowed the second cut


def test_section_lists_every_method_per_set():
    row = {"precision": 1.0, "recall": 0.5, "f1": 0.667, "recall_cut": 0.5, "recall_gradual": None,
           "false_positives": 0, "misses": 1}  # fmt: skip
    text = section(
        {"photos, held out": {"overall": {m: row for m in METHODS}, "per_file": {"montage": {m: row for m in METHODS}}}}
    )
    assert text.startswith("### Shots on real pictures")
    assert all(f"| {m} | 1.0 | 0.5 | 0.667 |" in text for m in METHODS)
    assert "| montage | 0.667 / 0 |" in text
