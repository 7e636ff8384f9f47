"""Test-only helpers shared by ``tests/`` and ``benchmarks/``, kept out of the installed package.

- ``testkit.audio_synth``: espeak-ng dialogues over music and silence, with their ground truth.
- ``testkit.scoring``: WER / CER for the ASR tests and benchmark (jiwer, a dev dependency).
- ``testkit.random_clip``: CLIP with random weights (no model can be downloaded).
- ``testkit.broken_media``: MP4s that lie about their duration or are cut short.

``prism/synth.py`` stays in the package: ``prism sample`` generates its demo title with it.
Importable from a checkout (``python -m pytest`` and ``python -m benchmarks`` run from the root).
"""
