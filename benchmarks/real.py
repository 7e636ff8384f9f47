"""Measurements on the real recordings and footage committed under tests/data, written into docs/benchmarks.md.

    python -m benchmarks.real                    # every benchmarks/real_*.py, sections rewritten in docs/benchmarks.md
    python -m benchmarks.real --only real_audio  # one of them
    python -m benchmarks.real --doc OTHER.md     # another Markdown file; --print: stdout only

A small registry: every module ``benchmarks/real_<name>.py`` exposes ``section() -> str``, one
Markdown section that starts with its own ``### `` heading. Each section replaces the section of
the same heading in the document (up to the next ``### `` or ``## `` heading) or is appended.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "benchmarks.md"


def modules() -> list[str]:
    """The registered measurement modules, ``real_*`` in this package, in name order."""
    import benchmarks

    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("real_"))


def replace_section(doc: str, section: str) -> str:
    """``doc`` with the section headed like ``section`` replaced by it (appended when absent)."""
    heading = section.strip().splitlines()[0].strip()
    if not heading.startswith("### "):
        raise ValueError(f"a section starts with its '### ' heading, got {heading!r}")
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    body = section.strip().splitlines()
    if start is None:
        return doc.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("### ", "## "))), len(lines))
    tail = lines[end:]
    return "\n".join([*lines[:start], *body, *([""] if tail else []), *tail]).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="a module name (real_audio); repeatable")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--print", dest="stdout", action="store_true", help="print the sections, write nothing")
    args = parser.parse_args(argv)
    names = modules()
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"no such measurement module: {', '.join(unknown)} (have: {', '.join(names)})")
    sections = []
    for name in args.only or names:
        section = importlib.import_module(f"benchmarks.{name}").section()
        sections.append(section)
        print(section, flush=True)
    if not args.stdout:
        doc = args.doc.read_text(encoding="utf-8") if args.doc.exists() else "# Benchmarks\n"
        for section in sections:
            doc = replace_section(doc, section)
        args.doc.write_text(doc, encoding="utf-8")
        print(f"wrote {len(sections)} section(s) into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
