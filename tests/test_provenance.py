"""Stage code versions are derived from the code: docstrings and comments do not count, code does."""

from __future__ import annotations

import sys
import textwrap

import pytest

from prism.provenance import code_version, code_version_of, module_closure, normalised_source
from prism.stages.base import registry

HELPER = '''
"""Helper module."""

THRESHOLD = 0.5  # the cut-off


def score(x):
    """Score one value."""
    return x > THRESHOLD
'''

STAGE = '''
"""A stage."""

from fakestage.helper import score


def run(x):
    from fakestage import lazy  # a lazy import counts too

    return score(x), lazy.VALUE
'''


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakestage"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(HELPER)
    (pkg / "stage.py").write_text(STAGE)
    (pkg / "lazy.py").write_text("VALUE = 1\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [n for n in sys.modules if n.startswith("fakestage")]:
        del sys.modules[name]


def version(pkg) -> str:
    return code_version_of("fakestage.stage", root="fakestage")


def test_closure_follows_imports_including_lazy_ones(fake_package):
    assert sorted(module_closure("fakestage.stage", root="fakestage")) == [
        "fakestage",
        "fakestage.helper",
        "fakestage.lazy",
        "fakestage.stage",
    ]


def test_docstring_comment_and_formatting_edits_keep_the_version(fake_package):
    before = version(fake_package)
    helper = fake_package / "helper.py"
    helper.write_text(
        HELPER.replace('"""Score one value."""', '"""Score one value, rewritten docs."""')
        .replace("# the cut-off", "# a new comment")
        .replace("return x > THRESHOLD", "return (\n        x > THRESHOLD\n    )\n\n\n# trailing note")
    )
    (fake_package / "stage.py").write_text(STAGE.replace('"""A stage."""', '"""A stage, described better."""'))
    assert version(fake_package) == before


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("helper.py", "THRESHOLD = 0.5", "THRESHOLD = 0.6"),  # a constant in an imported module
        ("helper.py", "return x > THRESHOLD", "return x >= THRESHOLD"),  # a condition
        ("lazy.py", "VALUE = 1", "VALUE = 2"),  # a module imported only inside a function
    ],
)
def test_code_edits_change_the_version(fake_package, module, old, new):
    before = version(fake_package)
    path = fake_package / module
    path.write_text(path.read_text().replace(old, new))
    assert version(fake_package) != before


def test_unrelated_modules_do_not_count(fake_package):
    before = version(fake_package)
    (fake_package / "unrelated.py").write_text("X = 2\n")
    assert version(fake_package) == before


def test_normalised_source_drops_only_docstrings():
    code = textwrap.dedent('''
        class A:
            """Doc."""

            def f(self):
                """Doc."""
                x = "not a docstring"
                return x
    ''')
    assert "Doc." not in normalised_source(code) and "not a docstring" in normalised_source(code)
    assert normalised_source(code.replace("Doc.", "Other doc.")) == normalised_source(code)


@pytest.mark.parametrize("stage", ["shots", "keyframes", "cues", "audio"])
def test_built_in_stages_carry_their_code_version(stage, monkeypatch):
    monkeypatch.setenv("PRISM_ASR_MODEL", "tiny.en")  # the audio identity without assembling Whisper base
    info = registry()[stage]().model()
    assert info.version.endswith(f"code-{code_version(f'prism.stages.{stage}')}")
    assert f"prism.stages.{stage}" in module_closure(f"prism.stages.{stage}")
