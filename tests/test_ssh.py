"""The SSH layer against a real sshd on loopback: host keys, commands, files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from sshd_support import Server, free_port, keygen, server

from psa_infra.errors import SSHError
from psa_infra.ssh import CommandFailed, Connection, KnownHosts, Target

__all__ = ["server"]


def _target(server: Server, **kwargs: object) -> Target:
    return Target(
        name="test-host",
        address=server.address,
        port=server.port,
        user="root",
        key_file=server.client_key,
        **kwargs,  # type: ignore[arg-type]
    )


def test_unknown_host_key_is_refused(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "state" / "known_hosts")
    with pytest.raises(SSHError) as caught:
        Connection(_target(server), known).connect()
    assert f"host key of [127.0.0.1]:{server.port} is not known" in caught.value.message
    assert "--accept-new-host-keys" in (caught.value.hint or "")
    assert not known.path.exists()


def test_new_host_key_is_recorded_then_checked(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "state" / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        assert connection.run("echo hello").stdout == "hello\n"
    recorded = known.path.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")
    # A second connection needs no trust: the key is known now.
    with Connection(_target(server), known) as connection:
        assert connection.run("true").ok
    assert known.path.read_text() == recorded


def test_changed_host_key_is_refused_even_when_trusting_new(
    server: Server, tmp_path: Path
) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    Connection(_target(server), known, trust_new=True).connect()
    # The "container" is re-created with a new key at the same address.
    for suffix in ("", ".pub"):
        Path(f"{server.host_key}{suffix}").unlink()
    keygen(server.host_key)
    subprocess.run(
        ["kill", "-HUP", (server.folder / "sshd.pid").read_text().strip()], check=True
    )
    time.sleep(0.5)
    with pytest.raises(SSHError) as caught:
        Connection(_target(server), known, trust_new=True).connect()
    assert "does not match the recorded one" in caught.value.message
    assert "ssh-keygen -f" in (caught.value.hint or "")
    assert known.forget("127.0.0.1", server.port)
    Connection(_target(server), known, trust_new=True).connect()


def test_failed_command_reports_host_step_command_and_output(
    server: Server, tmp_path: Path
) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        with pytest.raises(CommandFailed) as caught:
            connection.run(
                "for i in $(seq 1 30); do echo line$i; done >&2; exit 3", step="count"
            )
        message = caught.value.message
        assert message.startswith(
            "[test-host] step 'count': command failed with exit code 3"
        )
        assert "line30" in message and "line18" not in message
        result = connection.run("exit 4", check=False)
        assert result.exit_code == 4


def test_command_timeout(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        started = time.monotonic()
        with pytest.raises(SSHError) as caught:
            connection.run("sleep 20", timeout=1, step="wait")
        assert time.monotonic() - started < 5
        assert "command timed out after 1 s: sleep 20" in caught.value.message
        # The connection still works after a timed-out command.
        assert connection.run("echo ok").stdout == "ok\n"


def test_output_is_read_to_its_end(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        # Many commands in a row, each with output much larger than a packet
        # and written at the last moment: none loses its end.
        script = "head -c 300000 /dev/zero | tr '\\0' x; printf END"
        for _ in range(20):
            result = connection.run(script)
            assert len(result.stdout) == 300003 and result.stdout.endswith("xEND")
        for _ in range(50):
            assert connection.run("stat -c %U /").stdout == "root\n"


def test_a_background_process_holding_the_output_does_not_hold_the_run(
    server: Server, tmp_path: Path
) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        started = time.monotonic()
        result = connection.run("(sleep 8; echo late) & echo now")
        took = time.monotonic() - started
    assert result.stdout == "now\n"
    assert took < 6


def test_put_is_atomic_with_mode_and_owner(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    target = tmp_path / "remote" / "file.conf"
    target.parent.mkdir()
    with Connection(_target(server), known, trust_new=True) as connection:
        connection.put(
            b"secret=1\n", str(target), mode="0600", owner="nobody", group="nogroup"
        )
        assert connection.read(str(target)) == b"secret=1\n"
        assert connection.read(str(tmp_path / "missing")) is None
    stat = target.stat()
    assert oct(stat.st_mode & 0o777) == "0o600"
    assert stat.st_uid != 0
    assert not list(target.parent.glob("*.tmp"))


def test_secret_command_is_shown_masked(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    with Connection(_target(server), known, trust_new=True) as connection:
        with pytest.raises(CommandFailed) as caught:
            connection.run(
                "echo hunter2 >/dev/null; exit 1", shown="set password ********"
            )
        assert "hunter2" not in caught.value.message
        assert "set password ********" in caught.value.message


def test_connect_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    keygen(tmp_path / "key")
    target = Target(
        "down-host",
        "127.0.0.1",
        "root",
        tmp_path / "key",
        port=free_port(),
        connect_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(SSHError) as caught:
        Connection(target, KnownHosts(tmp_path / "kh"), connect_deadline=1.5).connect()
    assert time.monotonic() - started < 6
    assert caught.value.message.startswith(
        "[down-host] cannot connect to root@127.0.0.1:"
    )


def test_wrong_key_is_refused(server: Server, tmp_path: Path) -> None:
    keygen(tmp_path / "other")
    known = KnownHosts(tmp_path / "known_hosts")
    target = Target(
        "test-host", server.address, "root", tmp_path / "other", port=server.port
    )
    with pytest.raises(SSHError) as caught:
        Connection(target, known, trust_new=True).connect()
    assert "refused the key" in caught.value.message


def test_jump_host(server: Server, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    jump = _target(server)
    Connection(jump, known, trust_new=True).connect()
    target = Target(
        "behind", "127.0.0.1", "root", server.client_key, port=server.port, jump=jump
    )
    with Connection(target, known) as connection:
        assert connection.run("echo via-jump").stdout == "via-jump\n"
