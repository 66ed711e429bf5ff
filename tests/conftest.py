"""Shared fixtures: the project root and a CLI runner that captures streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from psa_infra.cli import run

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """What one CLI run returned and printed."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def project_root() -> Path:
    """The repository, which is itself a psa-infra project."""
    return ROOT


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``psa-infra ARGS`` in-process and return its exit code and output."""

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Test values for the inventory's secret references."""
    values = {
        "PSA_POSTGRES_PASSWORD": "pg-Secret-1",
        "PSA_REDIS_PASSWORD": "redis-Secret-2",
        "PSA_RABBITMQ_PASSWORD": "mq-Secret/3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
