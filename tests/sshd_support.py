"""A throwaway sshd on loopback: a real SSH peer for the SSH layer's tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")


@dataclass
class Server:
    address: str
    port: int
    client_key: Path
    host_key: Path
    folder: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True
    )


def _start(folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("sshd did not start")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not SSHD.exists() or shutil.which("ssh-keygen") is None or os.geteuid() != 0:
        pytest.fail(
            "these tests need root and openssh-server: run scripts/setup --system"
        )
    keygen(tmp_path / "host_key")
    keygen(tmp_path / "client_key")
    (tmp_path / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    port = free_port()
    process = _start(tmp_path, port)
    try:
        yield Server(
            "127.0.0.1", port, tmp_path / "client_key", tmp_path / "host_key", tmp_path
        )
    finally:
        process.terminate()
        process.wait(10)
