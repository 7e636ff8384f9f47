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


def test_a_gpu_job_fails_fast_instead_of_falling_back_to_the_cpu(monkeypatch):
    """Large-v3-turbo on the CPU over 2 h of audio runs past the job timeout: a GPU job without CUDA is a host error."""
    from prism.devices import resolve_device
    from prism.errors import HostError

    assert resolve_device("auto", "shots", cuda_available=lambda: False) == "cpu"  # locally: the CPU is fine
    monkeypatch.setenv("PRISM_REQUIRE_GPU", "true")
    with pytest.raises(HostError, match="host error: stage shots: this is a GPU job"):
        resolve_device("auto", "shots", cuda_available=lambda: False)
    assert resolve_device("auto", "shots", cuda_available=lambda: True) == "cuda"


def test_the_asr_model_does_not_fall_back_to_the_cpu_on_a_gpu_job(monkeypatch):
    import prism.audio.speech as speech
    from prism.errors import HostError

    def load(path, device, compute_type, cpu_threads):
        if device.startswith("cuda"):
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")
        return "model", "pipeline"

    load.cache_clear = lambda: None  # the real one is lru_cached
    monkeypatch.setattr(speech, "_cuda_devices", lambda: 1)
    monkeypatch.setattr(speech, "load_asr", load)
    assert speech.load_asr_checked("m", "auto", "default", 0)[2].device == "cpu"  # locally: falls back
    monkeypatch.setenv("PRISM_REQUIRE_GPU", "1")
    with pytest.raises(HostError, match="libcublas.so.12"):
        speech.load_asr_checked("m", "auto", "default", 0)
