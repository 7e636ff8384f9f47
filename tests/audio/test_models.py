"""The assembled Whisper base cache: checked, repaired, swept, and a cache that cannot be used named (issue 19.4)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prism.audio import models
from prism.cli import app
from prism.errors import ModelUnavailable

cli = CliRunner()


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@pytest.fixture(scope="module")
def assembled(tmp_path_factory) -> Path:
    """One good assembly, copied by the tests that damage it (assembling costs a 145 MB copy)."""
    root = tmp_path_factory.mktemp("models")
    return models.whisper_base(root).path


def _copy(assembled: Path, tmp_path: Path) -> Path:
    target = tmp_path / assembled.name
    shutil.copytree(assembled, target)
    return target


def _damage_weights(target: Path) -> None:
    with open(target / "model.bin", "r+b") as fh:  # 1 MiB of zeros in the middle, size unchanged
        fh.seek(50 << 20)
        fh.write(bytes(1 << 20))


def _damage_header(target: Path) -> None:
    with open(target / "model.bin", "r+b") as fh:
        fh.write(b"\xff" * 64)


def _truncate(target: Path) -> None:
    os.truncate(target / "model.bin", 1 << 20)


def _damage_tokenizer(target: Path) -> None:
    (target / "tokenizer.json").write_text("{")


@pytest.mark.parametrize("damage", [_damage_weights, _damage_header, _truncate, _damage_tokenizer])
def test_a_damaged_assembled_model_is_assembled_again(damage, assembled, tmp_path, caplog):
    target = _copy(assembled, tmp_path)
    assert models.whisper_base(tmp_path).path == target  # checked once in this process, then trusted
    damage(target)
    ref = models.whisper_base(tmp_path)  # the change of size/mtime/ctime makes it checked again
    assert ref.path == target and ref.version == models.BASE_SHA256[:12]
    assert _sha256(target / "model.bin") == models.BASE_SHA256
    assert (target / "tokenizer.json").read_bytes() == (assembled / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # the damaged copy is gone
    assert "damaged or incomplete; assembling it again" in caplog.text


def test_leftovers_of_an_interrupted_assembly_are_swept(assembled, tmp_path):
    target = _copy(assembled, tmp_path)
    for name in (".assembling-k1ll3d0", ".damaged-0badc0de"):  # kill -9 during a first run's copy, or a repair
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(bytes(1 << 20))
    assert models.whisper_base(tmp_path).path == target
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_leftovers_are_swept_when_assembling_too(tmp_path):
    (tmp_path / ".assembling-k1ll3d0").mkdir()
    (tmp_path / ".assembling-k1ll3d0" / "model.bin").write_bytes(bytes(1 << 20))
    ref = models.whisper_base(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ref.path.name]


def test_a_model_cache_that_is_a_file_is_named(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    with pytest.raises(ModelUnavailable, match=f"the model cache {cache} cannot be used .*set PRISM_MODEL_CACHE"):
        models.whisper_base(cache)


def test_cli_exits_2_naming_prism_model_cache_that_is_a_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    monkeypatch.setenv(models.ENV_CACHE, str(cache))
    monkeypatch.delenv(models.ENV_MODEL, raising=False)
    result = cli.invoke(app, ["run", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "out"), "--stages", "audio"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert f"the model cache {cache} cannot be used" in result.output and "set PRISM_MODEL_CACHE" in result.output


@pytest.mark.slow
def test_cli_exits_2_naming_prism_model_cache_with_a_read_only_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root writes read-only folders unless it drops the capability
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-dac_override"]
    env = {k: v for k, v in os.environ.items() if k not in (models.ENV_CACHE, models.ENV_MODEL, "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    out = tmp_path / "out"
    cmd = [*prefix, sys.executable, "-m", "prism.cli", "run", "x.mp4", "--out", str(out), "--stages", "audio"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    home.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"the model cache {home}/.cache/prism/models cannot be used (Permission denied)" in proc.stderr
    assert "set PRISM_MODEL_CACHE" in proc.stderr
