"""Every command line `fluxgate demo` prints runs as pasted into a fresh shell: each one is
run by ``env -i /bin/sh -c`` (no PATH of ours, no activated venv, another working
directory) against the live demo, and must exit 0 without "command not found"; the
printed `auth verify --probe` lines pass, verdict included, since the demo's config passes
its own audit on the routes it probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxgate.cli.demo import fluxctl_command
from tests.support.demo import running_demo


def printed_commands(banner: str) -> list[str]:
    """The shell commands in the demo's banner: lines that start with a command word,
    joined with their ``\\`` continuation lines (comments are the shell's own)."""
    commands: list[str] = []
    pending = ""
    for raw in banner.splitlines():
        line = raw.strip()
        if pending:
            pending += " " + line
        elif line.startswith(("curl ", "/", "'/")):  # curl, or a program by absolute path
            pending = line
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = ""
    return commands


def test_printed_commands_are_found_by_path():
    # The venv's own fluxctl, by absolute path (the tests run in that venv).
    command = fluxctl_command()
    assert os.path.isabs(command.split()[0].strip("'")), command
    assert command.split()[0].strip("'").startswith(os.path.dirname(sys.executable))


def test_parser_joins_continuations_and_skips_prose():
    banner = ("  curl -i http://x/a     # 200\n"
              "                         # more words\n"
              "  /venv/bin/fluxctl --config c auth verify \\\n"
              "      --probe http://x --token t\n"
              "  In a browser: http://x/app/\n")
    assert printed_commands(banner) == [
        "curl -i http://x/a     # 200",
        "/venv/bin/fluxctl --config c auth verify --probe http://x --token t",
    ]


def _ready(state: Path, log: str) -> bool:
    if "Ctrl-C stops it." not in log or not (state / "gateway.json").exists():
        return False
    return bool(json.loads((state / "gateway.json").read_text()).get("listen"))


@pytest.mark.slow
def test_every_printed_command_runs_in_a_fresh_shell(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with running_demo(tmp_path, _ready) as (_state, log_path):
        commands = printed_commands(log_path.read_text())
        fluxctl = [c for c in commands if not c.startswith("curl ")]
        assert len(commands) >= 15 and len(fluxctl) == 3, commands
        for command in commands:
            run = subprocess.run(["env", "-i", "/bin/sh", "-c", command], cwd=elsewhere,
                                 capture_output=True, text=True, timeout=90)
            assert "not found" not in run.stderr, (command, run.stderr)
            assert run.returncode == 0, (command, run.stdout, run.stderr)
            if "--probe" in command:
                last = run.stdout.splitlines()[-1]
                assert last == "result: pass (audit mode)", (command, run.stdout)
    assert "Traceback" not in log_path.read_text()


def test_readme_commands_name_the_venv():
    # The README's shell blocks run as pasted after `make demo`: no bare fluxctl/fluxgate,
    # which a shell without the activated venv does not find.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = readme.split("```")[1::2]  # the fenced blocks' contents
    lines = [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines()]
    bare = [line for line in lines if line.split(" ", 1)[0] in ("fluxctl", "fluxgate")]
    assert bare == []
    assert any(line.startswith(".venv/bin/fluxctl ") for line in lines)
