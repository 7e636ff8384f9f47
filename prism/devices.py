"""Which device a stage's model runs on: one definition of ``auto | cpu | cuda | cuda:N``.

Every stage with a ``device`` parameter validates it with :func:`check_device` (in its
``Params.__post_init__``, so a typo is a configuration error before any work) and turns it into
a concrete device with :func:`resolve_device` when it runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from prism.contract import ENV_REQUIRE_GPU
from prism.errors import ConfigError, HostError

DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str) -> str:
    """``device`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else :class:`ConfigError`."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"device must be {DEVICES}, got {device!r}")
    return device


def gpu_required() -> bool:
    """A GPU job (the cloud's job definitions set ``PRISM_REQUIRE_GPU``): falling back to the CPU would run a 2 h
    title's ASR past the job timeout, so a stage fails fast instead (and the worker exits for a retry elsewhere)."""
    return os.environ.get(ENV_REQUIRE_GPU, "").strip().lower() in ("1", "true", "yes")


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(
    device: str,
    stage: str,
    *,
    cuda_available: Callable[[], bool] = torch_cuda_available,
    strict: bool = True,
) -> str:
    """``auto`` becomes ``cuda`` when CUDA is usable, else ``cpu``; explicit values are kept.

    ``strict``: an explicit ``cuda``/``cuda:N`` on a machine without CUDA is a
    :class:`ConfigError` naming ``stage``. The audio stage passes ``strict=False`` because it
    falls back to the CPU itself and records why. ``cuda_available`` is asked only when needed
    (the ASR model asks CTranslate2, the other models torch).
    """
    check_device(device)
    if device == "auto":
        if cuda_available():
            return "cuda"
        if gpu_required():
            raise HostError(f"stage {stage}: this is a GPU job ({ENV_REQUIRE_GPU}) but CUDA is not usable here; "
                            "not falling back to the CPU")  # fmt: skip
        return "cpu"
    if strict and device.startswith("cuda") and not cuda_available():
        raise ConfigError(f"stage {stage}: device {device!r} requested but CUDA is not available")
    return device
