"""The worker image builds: every runtime dependency is a binary wheel for its Python and platform, or is built
by the Dockerfile's builder stage; CUDA libraries come once, from the wheels. Checked without Docker against PyPI
(``scripts/image_deps.py``, which also prints the expected size)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from scripts.image_deps import (
    DOCKERFILE,
    INDEX,
    ResolutionFailed,
    built_from_source,
    canonical,
    dockerfile_arg,
    resolve,
)

pytestmark = pytest.mark.slow


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=20).close()
    except (urllib.error.URLError, OSError):
        return False
    return True


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not _pypi_reachable():
        pytest.skip(f"PyPI ({INDEX}) is unreachable: the image's dependencies cannot be resolved")
    return resolve(tmp_path_factory.mktemp("image-deps"))


def test_every_runtime_dependency_is_a_binary_wheel_or_built_in_the_builder_stage(report):
    built = built_from_source()
    installed = {canonical(i["metadata"]["name"]): i for i in report}
    assert installed["torch"]["metadata"]["version"] == dockerfile_arg("TORCH_VERSION")
    assert installed["ctranslate2"]["metadata"]["version"] == dockerfile_arg("CTRANSLATE2_VERSION")
    for name in ("prism-video",):
        assert name not in installed  # the project itself is the builder's wheel, installed from it
    for name, item in installed.items():
        url = item["download_info"]["url"]
        if name in built:
            assert url.startswith("file:"), f"{name} resolved from {url}, not the builder stage's wheel"
            continue
        assert url.startswith("https://") and url.endswith(".whl"), f"{name}: {url} is not a binary wheel"
        tags = url.rsplit("/", 1)[-1].removesuffix(".whl").split("-")[-3:]
        assert tags[2] == "any" or "x86_64" in tags[2], f"{name}: {url} is not for x86_64"
    # The builder list names nothing the image no longer needs (each entry costs a compiler stage).
    assert set(built) <= set(installed), f"{sorted(set(built) - set(installed))} in build-from-source.txt unused"
    assert "webrtcvad" in built  # resemblyzer's VAD: PyPI has only its sdist


def test_cuda_libraries_come_once_from_the_wheels(report):
    names = [canonical(i["metadata"]["name"]) for i in report]
    cuda = [n for n in names if n.startswith("nvidia-")]
    assert any(n.startswith("nvidia-cublas") for n in cuda)  # torch's CUDA build: what CTranslate2 dlopens
    libraries = [re.sub(r"-cu\d+$", "", n) for n in cuda]
    assert len(libraries) == len(set(libraries)), f"a CUDA library twice: {sorted(cuda)}"
    assert {re.search(r"-cu(\d+)$", n).group(1) for n in cuda if re.search(r"-cu\d+$", n)} == {"12"}
    # ...and not a second time from the base image: no nvidia/cuda runtime base, whose libraries torch's wheels repeat
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(b == "${BASE_IMAGE}" for b in bases)
    base = dockerfile_arg("BASE_IMAGE")
    assert "nvidia/cuda" not in base and base.endswith("ubuntu:24.04"), base


def test_a_dependency_without_a_wheel_fails_the_check_naming_it(tmp_path, monkeypatch):
    """The check can fail: without the builder stage's webrtcvad, resolution stops at it."""
    import scripts.image_deps as image_deps

    if not _pypi_reachable():
        pytest.skip(f"PyPI ({INDEX}) is unreachable")
    monkeypatch.setattr(image_deps, "built_from_source", lambda: {})
    monkeypatch.setattr(image_deps, "requirements", lambda: ["resemblyzer==0.1.4"])
    with pytest.raises(ResolutionFailed, match="webrtcvad"):
        image_deps.resolve(tmp_path)
