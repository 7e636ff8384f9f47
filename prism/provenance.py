"""A stage's code version, derived from its source instead of bumped by hand.

A stage's ``model().version`` is part of its fingerprint, so it decides when the back
catalogue reruns. For a stage's own logic it is :func:`code_version`: a hash of the normalised
source of the stage's module and of every ``prism`` module it imports, directly or through
others (lazy imports inside functions included). Normalised means parsed: comments, blank
lines, formatting and docstrings are not in the hash, so editing them reruns nothing; any change
to what the code does (a constant, a condition, a new import) is. Modules that only carry
plumbing and never shape an output (:data:`PLUMBING`) are left out, so a change there does not
rerun every stage. Weights are identified separately (a file digest or a model revision) and
stay next to this in the version string.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

# The stage interface, errors, artifact writing, device choice, ffmpeg lookup, the code hash itself.
PLUMBING = frozenset(
    {"prism.stages.base", "prism.errors", "prism.artifacts", "prism.devices", "prism.media.tools", "prism.provenance"}
)


def normalised_source(source: str) -> str:
    """The module's syntax tree without docstrings, as text: what the code does, not how it reads."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _spec_origin(name: str) -> tuple[Path | None, bool]:
    """(source file, is a package) of module ``name``, or (None, False) if it is not a module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None, False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None, False
    return Path(spec.origin), spec.submodule_search_locations is not None


def _imports(tree: ast.AST, module: str, is_package: bool, root: str) -> set[str]:
    """The ``root`` modules ``tree`` imports (``from pkg import submodule`` counts the submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # kept only if it is a module
    return {n for n in found if n == root or n.startswith(root + ".")}


def module_closure(module: str, root: str = "prism", skip: Iterable[str] = PLUMBING) -> dict[str, Path]:
    """``{module name: source file}`` of ``module`` and the ``root`` modules it reaches through imports."""
    skip = set(skip)
    files: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in files or name in skip:
            continue
        path, is_package = _spec_origin(name)
        if path is None:
            continue
        files[name] = path
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pending.extend(_imports(tree, name, is_package, root) - files.keys())
    return files


def digest_sources(sources: dict[str, str]) -> str:
    """12 hex digits over ``{module name: source}``, normalised."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + normalised_source(sources[name]).encode() + b"\0")
    return h.hexdigest()[:12]


def code_version_of(module: str, root: str = "prism", skip: Iterable[str] = PLUMBING) -> str:
    files = module_closure(module, root, skip)
    return digest_sources({name: path.read_text(encoding="utf-8") for name, path in files.items()})


@functools.cache
def code_version(module: str) -> str:
    """The code version of a stage module (computed once per process: the source does not change under it)."""
    return code_version_of(module)
