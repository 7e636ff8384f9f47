"""Audio analysis building blocks for the ``audio`` stage: streaming decode + loudness, VAD + ASR, speakers, subtitles."""
