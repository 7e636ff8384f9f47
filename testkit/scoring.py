"""Word and character error rates of a transcript against known text (audio tests and benchmarks)."""

from __future__ import annotations

import re

import jiwer

NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
           "7": "seven", "8": "eight", "9": "nine", "10": "ten"}  # fmt: skip


def normalise(text: str) -> str:
    """Lower case, no punctuation or apostrophes, small numbers spelled out."""
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace("'", "")
    return " ".join(NUMBERS.get(w, w) for w in text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


def character_error_rate(reference: str, hypothesis: str) -> float:
    """CER over letters and digits only (spaces and punctuation removed): for Korean, Japanese, Chinese."""
    ref = re.sub(r"[\W_]+", "", reference.lower())
    hyp = re.sub(r"[\W_]+", "", hypothesis.lower())
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp)) if hyp else 1.0
