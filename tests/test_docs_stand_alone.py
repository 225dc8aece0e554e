"""The repository stands alone: no tracked file (docs, comments, docstrings, --help, the
example config) cites a design or style document that is not in it, as "DESIGN §4" or
"see STYLE.md" did. Section signs that cite RFCs and other public specs are fine."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest

from fluxgate.cli import fluxctl, fluxgate
from tests.support.gateway import REPO

# "DESIGN", "DESIGN.md", "STYLE:", "design.md", "the design doc": a document users do not have.
CITATION = re.compile(
    r"\b(?:design|style)\.md\b|\bdesign doc(?:ument)?\b|\b(?:DESIGN|STYLE)\b", re.IGNORECASE
)
THIS_FILE = "tests/test_docs_stand_alone.py"


def tracked_text_files() -> list[str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return [n for n in names if n and n != THIS_FILE]


def citations(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in CITATION.finditer(line):
            word = match.group(0)
            # "design"/"style" as plain English words are fine in lower case ("the designed
            # flow", "code style"); the citation is the capitalized name or the file name.
            if word.lower() in ("design", "style") and not word.isupper():
                continue
            found.append(f"{number}: {line.strip()}")
    return found


def test_no_tracked_file_cites_a_design_or_style_document():
    offenders = {}
    for name in tracked_text_files():
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (images, fixtures)
        if hits := citations(text):
            offenders[name] = hits
    assert not offenders, offenders


def test_the_check_itself_catches_citations():
    assert citations("see DESIGN §4 for the keys")
    assert citations("# STYLE: split past 1,500 lines")
    assert citations("described in design.md")
    assert citations("the design document says")
    assert not citations("RFC 9110 §7.2: uri-host")
    assert not citations("a well designed style of code")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("module", [fluxgate, fluxctl], ids=["fluxgate", "fluxctl"])
def test_help_texts_cite_no_design_document(module):
    for parser in _parsers(module.build_parser()):
        text = parser.format_help()
        assert not citations(text), (parser.prog, citations(text))
        assert not re.search(r"(?<!RFC )(?<!\d )§", text), (parser.prog, text)
