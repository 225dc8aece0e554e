"""The repository stands alone (README, "Documentation"): a tracked file (docs, comments,
docstrings, --help, the example config) cites only documents that are in the repository and
public specifications. A document is cited by an upper-case name followed by ".md" or by a
section sign; each such name must be a file of the repository. Section signs after an RFC
number or a specification's title are not document names and pass."""

from __future__ import annotations

import argparse
import re
import subprocess
from functools import cache

import pytest

from fluxgate.cli import fluxctl, fluxgate
from tests.support.gateway import REPO

# An upper-case document name given as a file (".md") or followed by a section sign.
CITED = re.compile(r"\b([A-Z][A-Z0-9_]{2,})(?:\.md\b|\s?\u00a7)")


def tracked_text_files() -> list[str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return [n for n in names if n]


@cache
def documents() -> frozenset[str]:
    """Names a citation may use: the repository's files, by their name without ``.md``."""
    return frozenset(name.rsplit("/", 1)[-1].removesuffix(".md") for name in tracked_text_files())


def citations(text: str, known: frozenset[str] | None = None) -> list[str]:
    """Lines of ``text`` citing a document that is not among ``known`` (default: the
    repository's files)."""
    known = documents() if known is None else known
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if any(m.group(1) not in known for m in CITED.finditer(line)):
            found.append(f"{number}: {line.strip()}")
    return found


def test_no_tracked_file_cites_a_document_the_repository_lacks():
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
    known = frozenset({"README"})
    section, missing = "\u00a7", "HANDBOOK"  # a document the repository does not have
    assert citations(f"see {missing}.md for the keys", known)
    assert citations(f"the keys are in {missing} {section}4", known)
    assert not citations(f"the layout is in README {section}Layout and README.md", known)
    assert not citations(f"RFC 9110 {section}7.2: uri-host", known)
    assert not citations(f"OpenID Connect Discovery {section}4.3", known)


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("module", [fluxgate, fluxctl], ids=["fluxgate", "fluxctl"])
def test_help_texts_cite_no_missing_document(module):
    for parser in _parsers(module.build_parser()):
        text = parser.format_help()
        assert not citations(text), (parser.prog, citations(text))
