"""README.md runs as written: its Quick tour, command by command, on a fresh embedded
server in a scratch directory, then its Python snippet against the tour's database
(before the tour's last line, `down`). Its Layout section names the tree as it is."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import costwarden

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV_BIN = Path(sys.executable).parent


def _block(after: str, language: str) -> str:
    """The first ``language`` code block after the heading or sentence ``after``."""
    start = README.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no ```{language} block after {after!r}"
    return match.group(1)


def tour() -> list[list[str]]:
    commands = []
    for line in _block("## Quick tour", "sh").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == ".venv/bin/costwarden", line
            commands.append([str(VENV_BIN / "costwarden"), *words[1:]])
    return commands


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Not pytest's tmp_path: the server runs as the postgres user when we are root.
    path = Path(tempfile.mkdtemp(prefix="cw-readme-", dir="/tmp"))
    path.chmod(0o755)
    for var in ("COSTWARDEN_DSN", "COSTWARDEN_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    yield path
    from costwarden.embedded import EmbeddedCluster

    EmbeddedCluster(path / ".costwarden" / "pgdata").stop()
    shutil.rmtree(path, ignore_errors=True)


def test_the_tour_and_the_snippet_run_as_written(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = tour()
    assert commands[0][1:] == ["up"] and commands[-1][1:] == ["down"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWARDEN_")}
    outputs = []
    dsn = ""
    for argv in commands[:-1]:
        done = subprocess.run(
            argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        outputs.append(done.stdout)
        if argv[1:] == ["up"]:
            dsn = done.stdout.strip().splitlines()[-1]
    assert dsn.startswith("postgresql://")
    text = "\n".join(outputs)
    assert "state: up to date" in text
    assert "billing platform_managed" in text
    assert "ledger OK" in text

    # the snippet, as written; call_the_provider is the reader's own function
    calls = []
    namespace = {"call_the_provider": lambda: calls.append(1) or "a reply"}
    monkeypatch.setenv("COSTWARDEN_DSN", dsn)
    exec(compile(_block("From Python", "python"), "README.md", "exec"), namespace)
    assert calls == [1]
    with costwarden.Client(dsn) as client:
        [held] = client.reservations("acme")
        assert held.status == "committed" and held.user_id == "alice"
        [status] = client.budget_status("acme", "workspace", "support")
        assert status.limit_value == 5_000_000 and status.spent == held.charged_micros > 0

    done = subprocess.run(
        commands[-1], cwd=scratch, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr


def test_the_layout_section_names_the_tree() -> None:
    layout = _block("## Layout", "")
    named = [line.split()[0] for line in layout.splitlines() if line and not line[0].isspace()]
    for path in named:
        assert (ROOT / path).exists(), path
    package = ROOT / "python" / "costwarden"
    for sub in re.findall(r"^  (\w+)/", layout, re.M):
        assert (package / sub / "__init__.py").is_file(), sub
    assert sorted(re.findall(r"^  (\w+)/", layout, re.M)) == sorted(
        p.name for p in package.iterdir() if (p / "__init__.py").is_file()
    )
