"""One Lambda asset without Docker: the ``lambdas/`` handlers plus the pure-Python prism modules they share.

``prism.artifacts`` (layout, manifest schema), ``prism.catalog`` (records) and ``prism.cloud``
(DynamoDB catalog, S3 keys) import only the standard library and boto3, so they are copied as
is; everything else in ``prism`` (media, stages, torch) stays out of the Lambda.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRISM_FILES = ("__init__.py", "artifacts.py", "catalog.py", "errors.py", "schemas", "cloud")


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
            shutil.copytree(src, out / "prism" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, out / "prism" / name)
    return str(out)
