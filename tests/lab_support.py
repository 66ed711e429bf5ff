"""Helpers shared by the lab tests: run psa-infra, find lab leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def psa_infra(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``psa-infra`` command, as an operator would."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "--root", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **env} if env is not None else None,
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"psa-infra {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        )
    return done


def lab_leftovers() -> list[str]:
    """Whatever of a lab is still on this host."""
    found = [str(p) for p in Path("/var/lib/lxc").glob("psa-lab-*")]
    found += [
        f"link {n}"
        for n in os.listdir("/sys/class/net")
        if n in ("vmbr20", "vmbr30") or n.startswith("psalab")
    ]
    rules = subprocess.run(
        ["sh", "-c", "iptables -S; iptables -t nat -S"], capture_output=True, text=True
    ).stdout
    found += [
        f"iptables: {line}"
        for line in rules.splitlines()
        if "PSA_LAB" in line or "10.0.20.0/24" in line or "10.0.30.0/24" in line
    ]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"psa_lab.server" in argv:
            found.append(f"process {pid}")
    return found


def lab_settings() -> dict[str, str]:
    """The settings ``eval "$(psa-infra lab env)"`` gives a shell."""
    exported = psa_infra("lab", "env").stdout
    shell = subprocess.run(
        ["bash", "-c", exported + "\nenv -0"],
        capture_output=True,
        text=True,
        check=True,
    )
    settings = dict(
        item.partition("=")[::2] for item in shell.stdout.split("\0") if item
    )
    return {k: v for k, v in settings.items() if k.startswith(("PROXMOX_", "PSA_"))}


@contextmanager
def running_lab(inventory: str) -> Iterator[dict[str, str]]:
    """The lab up for ``inventory``, taken down afterwards; yields lab_settings()."""
    assert not lab_leftovers(), "a lab is already on this machine: psa-infra lab down"
    try:
        psa_infra("lab", "up", inventory)
        yield lab_settings()
    finally:
        psa_infra("lab", "down", check=False)
        assert not lab_leftovers()
