"""The Lambda asset as the runtime sees it: only the bundle and the Lambda's own libraries on the path."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the Lambda runtime (boto3) and the Powertools layer (powertools, pydantic) provide, with their dependencies.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3",
                    "aws_lambda_powertools", "pydantic", "pydantic_core", "annotated_types", "typing_extensions.py",
                    "typing_inspection", "fastjsonschema")  # fmt: skip


@pytest.fixture(scope="module")
def runtime_path(tmp_path_factory) -> Path:
    """A directory with only the Lambda runtime's and layer's packages (not prism, not torch)."""
    site = Path(sysconfig.get_paths()["purelib"])
    path = tmp_path_factory.mktemp("runtime")
    for name in RUNTIME_PACKAGES:
        if (site / name).exists():
            (path / name).symlink_to(site / name)
    return path


@pytest.mark.parametrize("handler", ["discover", "finalize", "record_failure", "summarise"])
def test_each_handler_imports_from_the_bundle_alone_with_the_real_version(handler, runtime_path):
    from cdk.lambda_bundle import lambda_bundle

    bundle = lambda_bundle()
    probe = (f"import sys; sys.path[:0] = [{bundle!r}, {str(runtime_path)!r}]; import {handler}, prism, json; "
             "from prism.contract import EXIT_FAILED, Status; "
             "print(json.dumps({'version': prism.__version__, 'prism': prism.__file__, "
             "'contract': [EXIT_FAILED, Status('blocked').value], "
             "'heavy': sorted(m for m in ('torch', 'numpy', 'pyarrow', 'cv2') if m in sys.modules)}))")  # fmt: skip
    # -S: no site-packages (where the editable prism and torch live); -I: no PYTHONPATH or user site
    done = subprocess.run([sys.executable, "-S", "-I", "-c", probe], capture_output=True, text=True, cwd="/", check=False,
                          env={"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_METRICS_NAMESPACE": "Prism"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert found["version"] == expected != "0.0.0+source"
    assert found["prism"].startswith(bundle) and found["heavy"] == []
    assert found["contract"] == [1, "blocked"]  # the names the worker and the CDK use, from the bundle itself


def test_the_bundle_ships_the_contract_but_not_the_worker():
    from cdk.lambda_bundle import lambda_bundle

    bundle = Path(lambda_bundle())
    assert (bundle / "prism" / "contract.py").read_text() == (ROOT / "prism" / "contract.py").read_text()
    assert not (bundle / "prism" / "cloud" / "worker.py").exists()  # imports the runner and the media stack
