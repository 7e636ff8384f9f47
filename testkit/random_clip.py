"""CLIP with random weights and an offline byte-level tokenizer, for tests and the CPU benchmark.

No CLIP weights can be downloaded here: these have the right shapes and load through the same
code as a real model directory (``save_random_clip``), but their vectors mean nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.errors import ConfigError
from prism.stages.base import ModelInfo
from prism.stages.embeddings import ImageTextEncoder

# CLIP shapes with random weights, for tests and the CPU benchmark (no weights can be downloaded).
RANDOM_CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "projection_dim": 16,
    },
    "vit-b-32": {  # the compute of openai/clip-vit-base-patch32
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 32},
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        "projection_dim": 512,
    },
}  # fmt: skip


def random_clip(preset: str = "tiny", seed: int = 0) -> ImageTextEncoder:
    """A CLIP model with RANDOM weights and an offline byte-level tokenizer: right shapes, meaningless vectors."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    if preset not in RANDOM_CLIP_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {sorted(RANDOM_CLIP_PRESETS)}")
    shape = RANDOM_CLIP_PRESETS[preset]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # every byte, alone and word-final: any text tokenizes without merges
        for char in _byte_chars():
            vocab[char + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    side = shape["vision"]["image_size"]
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(
        text_config={**shape["text"], "vocab_size": len(vocab), "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config=shape["vision"],
        projection_dim=shape["projection_dim"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    return ImageTextEncoder(model, processor, ModelInfo(f"random-clip-{preset}", f"seed-{seed}"))


def save_random_clip(directory: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write ``random_clip`` as a model directory ``ImageTextEncoder.load`` reads like a real one."""
    directory = Path(directory)
    encoder = random_clip(preset, seed)
    encoder.model.save_pretrained(directory)
    encoder.processor.save_pretrained(directory)
    return directory


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(extra)}
    return [chars[b] for b in range(256)]
