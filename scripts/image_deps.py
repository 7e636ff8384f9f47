"""The worker image's Python dependencies, resolved without Docker as the image's pip resolves them.

``resolve()`` runs ``pip install --dry-run --only-binary=:all:`` for the image's Python (3.12) and platform
(manylinux x86_64, glibc of Ubuntu 24.04) against PyPI: Prism's dependencies from pyproject.toml plus the
torch and ctranslate2 pins of containers/Dockerfile. The packages the Dockerfile's builder stage compiles
(containers/build-from-source.txt) stand in as placeholder wheels, exactly what the builder hands the runtime
stage. A dependency with no binary wheel for the image fails the resolution, naming it.

``python scripts/image_deps.py`` prints each wheel, its size on PyPI and installed, and the totals: the
expected size of the image's virtual environment (read from each wheel's zip directory with HTTP range
requests; nothing is downloaded whole).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"
BUILD_FROM_SOURCE = ROOT / "containers" / "build-from-source.txt"
PYTHON_VERSION = "3.12"  # Ubuntu 24.04's python3, the image's
GLIBC_MINOR = 39  # Ubuntu 24.04: manylinux_2_17 .. manylinux_2_39 wheels install there
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 16, -1)] + ["manylinux2014_x86_64"]
INDEX = "https://pypi.org/simple"


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if not match:
        raise ValueError(f"{DOCKERFILE}: no ARG {name}=...")
    return match.group(1)


def built_from_source() -> dict[str, str]:
    """Name -> version of the packages the builder stage compiles."""
    pins = {}
    for line in BUILD_FROM_SOURCE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise ValueError(f"{BUILD_FROM_SOURCE}: pin {name!r} with ==")
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [f"torch=={dockerfile_arg('TORCH_VERSION')}", f"ctranslate2=={dockerfile_arg('CTRANSLATE2_VERSION')}"]
    return pins + [d for d in project["dependencies"] if canonical(re.split(r"[<>=!~;\[ ]", d)[0]) != "torch"]


def placeholder_wheel(folder: Path, name: str, version: str) -> Path:
    """What the builder stage hands over: a wheel of ``name`` (metadata only; what pip resolves with)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: prism\nRoot-Is-Purelib: true\nTag: py3-none-any\n")  # fmt: skip
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return path


class ResolutionFailed(RuntimeError):
    """pip could not resolve the image's dependencies to binary wheels (its message says which)."""


def resolve(work: Path) -> list[dict]:
    """pip's installation report (``install`` items) for the image's dependencies; raises ResolutionFailed."""
    wheels = work / "builder-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, version in built_from_source().items():
        placeholder_wheel(wheels, name, version)
    reqs = work / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    report = work / "report.json"
    # This machine's pip settings (local wheel folders, extra indexes, constraints) would answer for PyPI: off.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--target", str(work / "target"), "--index-url", INDEX, "--find-links", str(wheels),
           "--only-binary=:all:", *platforms, "--python-version", PYTHON_VERSION, "--implementation", "cp",
           "--report", str(report), "-r", str(reqs)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise ResolutionFailed("\n".join(errors) or done.stderr[-2000:])
    return json.loads(report.read_text())["install"]


class _RangeFile(io.RawIOBase):
    """A remote file read with HTTP range requests: enough for zipfile to read a wheel's directory."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        self.pos += len(data)
        return data


def wheel_sizes(url: str) -> tuple[int, int]:
    """(bytes on PyPI, bytes installed) of one wheel."""
    remote = _RangeFile(url)
    with zipfile.ZipFile(remote) as whl:  # reads the end record, then the central directory in one request
        return remote.size, sum(info.file_size for info in whl.infolist())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        items = resolve(Path(tmp))
    rows, built = [], built_from_source()
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        url = item["download_info"]["url"]
        if canonical(name) in built:
            rows.append((name, version, 0, 0, "built in the builder stage"))
            continue
        packed, installed = wheel_sizes(url)
        rows.append((name, version, packed, installed, url.rsplit("/", 1)[-1]))
    rows.sort(key=lambda r: -r[3])
    mib = 1 << 20
    for name, version, packed, installed, note in rows:
        print(f"{name:32} {version:14} {packed / mib:9.1f} MiB {installed / mib:9.1f} MiB installed  {note}")
    print(f"{len(rows)} packages: {sum(r[2] for r in rows) / mib:,.0f} MiB of wheels, "
          f"{sum(r[3] for r in rows) / mib:,.0f} MiB installed in /opt/venv")  # fmt: skip
    cuda = sum(r[3] for r in rows if r[0].startswith(("nvidia-", "cuda-")))
    print(f"of which CUDA libraries (nvidia-* wheels): {cuda / mib:,.0f} MiB")


if __name__ == "__main__":
    main()
