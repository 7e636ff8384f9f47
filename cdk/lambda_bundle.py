"""One Lambda asset without Docker: the ``lambdas/`` handlers plus the pure-Python prism modules they share.

``prism.artifacts`` (layout, manifest schema), ``prism.catalog`` (records) and ``prism.cloud``
(DynamoDB catalog, S3 keys) import only the standard library and boto3, so they are copied as
is; everything else in ``prism`` (media, stages, torch) stays out of the Lambda.

``prism.__version__`` comes from the installed distribution's metadata, which a plain copy of the
sources lacks (it would read ``0.0.0+source`` in every record the handlers write); the bundle
therefore carries a minimal ``prism_video-<version>.dist-info`` with the version in pyproject.toml.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINER_ONLY = ("worker.py", "store.py")  # prism.cloud modules that import the media stack: the Batch image only
PRISM_FILES = ("__init__.py", "artifacts.py", "catalog.py", "contract.py", "errors.py", "schemas", "cloud")


@lru_cache(maxsize=1)
def lambda_bundle() -> str:
    """Assemble the asset directory once per process; CDK hashes its content."""
    out = Path(tempfile.mkdtemp(prefix="prism-lambda-"))
    for handler in sorted((ROOT / "lambdas").glob("*.py")):
        shutil.copy2(handler, out / handler.name)
    (out / "prism").mkdir()
    for name in PRISM_FILES:
        src = ROOT / "prism" / name
        if src.is_dir():
            shutil.copytree(
                src, out / "prism" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *CONTAINER_ONLY)
            )
        else:
            shutil.copy2(src, out / "prism" / name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dist_info = out / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    return str(out)
