"""One device resolution for every stage: same validation, same auto rule, same error."""

from __future__ import annotations

import pytest

from prism.devices import check_device, resolve_device
from prism.errors import ConfigError
from prism.stages.base import registry


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices_pass(value):
    assert check_device(value) == value


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:1 ", "mps", ""])
def test_invalid_devices_are_config_errors(value):
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        check_device(value)


@pytest.mark.parametrize("stage", ["shots", "embeddings", "audio"])
def test_every_stage_validates_device_the_same_way(stage):
    cls = registry()[stage]
    with pytest.raises(ConfigError, match=rf"stage '{stage}': device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"):
        cls({"device": "cuda:x"})
    assert cls({"device": "cuda:1"}).params.device == "cuda:1"


def test_auto_follows_cuda_availability():
    assert resolve_device("auto", "shots", cuda_available=lambda: True) == "cuda"
    assert resolve_device("auto", "shots", cuda_available=lambda: False) == "cpu"
    assert resolve_device("cpu", "shots", cuda_available=lambda: True) == "cpu"


def test_explicit_cuda_without_cuda_names_the_stage():
    with pytest.raises(ConfigError, match=r"stage embeddings: device 'cuda:1' requested but CUDA is not available"):
        resolve_device("cuda:1", "embeddings", cuda_available=lambda: False)
    # the audio stage falls back to the CPU itself, so it asks for no error
    assert resolve_device("cuda", "audio", cuda_available=lambda: False, strict=False) == "cuda"


def test_availability_is_not_probed_for_cpu():
    def boom() -> bool:
        raise AssertionError("probed")

    assert resolve_device("cpu", "shots", cuda_available=boom) == "cpu"
