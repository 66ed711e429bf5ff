"""The app's own tests (Node's test runner), run from a clean copy of app/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"


def test_app_builds_and_passes_its_tests(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed: run scripts/setup --system")
    copy = tmp_path / "app"
    shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
    for command in (["npm", "ci", "--no-audit", "--no-fund"], ["npm", "test"]):
        done = subprocess.run(
            command, cwd=copy, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}"
    assert "# fail 0" in done.stdout
