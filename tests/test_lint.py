"""Linters for what is not Python: Dockerfiles (hadolint) and shell scripts (shellcheck)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hotdeal_local.servers import REPO

BIN = Path(sys.prefix) / "bin"


def test_dockerfiles_pass_hadolint():
    files = sorted(str(p) for p in (REPO / "images").glob("*/Dockerfile"))
    assert len(files) == 2
    done = subprocess.run([str(BIN / "hadolint"), *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_scripts_pass_shellcheck():
    files = [*map(str, sorted((REPO / "scripts").glob("*.sh"))), str(REPO / ".ci" / "run")]
    done = subprocess.run([str(BIN / "shellcheck"), *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
