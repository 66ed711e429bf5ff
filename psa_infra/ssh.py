"""SSH to containers: one connection per host, host keys checked, results as values.

Only this module imports paramiko. A host's key is trusted in two cases
only: it is already in the project's known_hosts file, or the caller says the
host is new (psa-infra has just created the container) or the operator asked
to accept new keys. A key that differs from the recorded one is always
refused. Commands return a :class:`Result`; a failed command raises
:class:`CommandFailed` naming the host, the step, the command, its exit code
and the last lines of its output.
"""

from __future__ import annotations

import io
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SSHError

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

TAIL_LINES = 12
DEFAULT_TIMEOUT = 600.0
# Seconds to wait for the end of the output once a command has exited.
EOF_GRACE = 2.0


def quote(value: object) -> str:
    """Quote one value for a POSIX shell."""
    return shlex.quote(str(value))


@dataclass(frozen=True)
class Result:
    """What one command did on one host."""

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class CommandFailed(SSHError):
    """A command exited non-zero."""

    def __init__(
        self, result: Result, step: str | None = None, shown: str | None = None
    ):
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n".join(f"    {line}" for line in output[-TAIL_LINES:])
        where = f"[{result.host}]" + (f" step '{step}'" if step else "")
        super().__init__(
            f"{where}: command failed with exit code {result.exit_code}: "
            f"{shown or result.command}" + (f"\n  last output:\n{tail}" if tail else "")
        )
        self.result = result


class KnownHosts:
    """The project's known_hosts file, in OpenSSH's format."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @staticmethod
    def entry(address: str, port: int) -> str:
        return address if port == 22 else f"[{address}]:{port}"

    def load(self) -> paramiko.HostKeys:
        import paramiko

        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def add(self, address: str, port: int, key: paramiko.PKey) -> None:
        """Record a host's key, replacing none: callers check first."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = f"{self.entry(address, port)} {key.get_name()} {key.get_base64()}\n"
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        log.info("[%s] recorded host key %s", address, fingerprint(key))

    def forget(self, address: str, port: int = 22) -> bool:
        """Remove a host's recorded keys; return whether any were there."""
        with self._lock:
            if not self.path.exists():
                return False
            name = self.entry(address, port)
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if line.split(" ", 1)[0] != name]
            if len(kept) == len(lines):
                return False
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(kept), encoding="utf-8")
            temporary.replace(self.path)
            return True


def fingerprint(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint OpenSSH shows for a key."""
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Target:
    """Where and how to reach one host."""

    name: str
    address: str
    user: str
    key_file: Path
    port: int = 22
    connect_timeout: float = 10.0
    jump: Target | None = None


class Connection:
    """One SSH connection to one host, reused for every command."""

    def __init__(
        self,
        target: Target,
        known_hosts: KnownHosts,
        trust_new: bool = False,
        connect_deadline: float = 0.0,
    ) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self.trust_new = trust_new
        self.connect_deadline = connect_deadline
        self._client: paramiko.SSHClient | None = None
        self._jump: Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def name(self) -> str:
        return self.target.name

    def __enter__(self) -> Connection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, retrying while the host is not up yet, within the deadline."""
        if self._client is not None:
            return
        give_up = time.monotonic() + self.connect_deadline
        delay = 0.2
        while True:
            try:
                self._client = self._open()
                return
            except SSHError:
                raise
            except (OSError, EOFError) as exc:
                if time.monotonic() + delay > give_up:
                    raise SSHError(
                        f"[{self.name}] cannot connect to {self.target.user}@"
                        f"{self.target.address}:{self.target.port}: {_reason(exc)}",
                        hint="check that the container runs and its address and "
                        "SSH key in the inventory are right",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _open(self) -> paramiko.SSHClient:
        import paramiko

        target = self.target
        sock = None
        if target.jump is not None:
            self._jump = Connection(target.jump, self.known_hosts, trust_new=False)
            self._jump.connect()
            assert self._jump._client is not None
            transport = self._jump._client.get_transport()
            assert transport is not None
            try:
                sock = transport.open_channel(
                    "direct-tcpip", (target.address, target.port), ("127.0.0.1", 0)
                )
            except paramiko.ChannelException as exc:
                raise OSError(
                    f"jump host {target.jump.name} cannot reach it: {exc}"
                ) from None
        client = paramiko.SSHClient()
        if self.known_hosts.path.exists():
            client.load_host_keys(str(self.known_hosts.path))
        client.set_missing_host_key_policy(_Policy(self))
        try:
            key = _load_key(target.key_file)
            client.connect(
                target.address,
                port=target.port,
                username=target.user,
                pkey=key,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
                sock=sock,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            entry = KnownHosts.entry(target.address, target.port)
            raise SSHError(
                f"[{self.name}] host key of {entry} does not match the recorded one: "
                f"got {fingerprint(exc.key)}, expected {fingerprint(exc.expected_key)}",
                hint="if the container was re-created, forget the old key with "
                f"`ssh-keygen -f {self.known_hosts.path} -R '{entry}'` and connect "
                "again; otherwise something else answers at that address",
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise SSHError(
                f"[{self.name}] {target.user}@{target.address} refused the key "
                f"{target.key_file}",
                hint="check ssh.private_key in the inventory and the container's "
                "authorized_keys",
            ) from None
        except SSHError:
            client.close()
            raise
        except paramiko.SSHException as exc:
            client.close()
            raise OSError(str(exc)) from None
        return client

    def close(self) -> None:
        """Close the connection (and the jump host's)."""
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        step: str | None = None,
        stdin: bytes | None = None,
        shown: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run a shell command; raise :class:`CommandFailed` unless ``check`` is off.

        ``shown`` is how the command appears in logs and errors, for commands
        that carry something that must not be shown.
        """
        self.connect()
        assert self._client is not None
        display = shown or command
        log.debug("[%s] run: %s", self.name, display)
        if env:
            command = (
                " ".join(f"{k}={quote(v)}" for k, v in env.items()) + " " + command
            )
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"[{self.name}] the connection was lost")
        try:
            channel = transport.open_session(timeout=self.target.connect_timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err, code = _collect(channel, timeout)
        except TimeoutError:
            raise SSHError(
                f"[{self.name}]"
                + (f" step '{step}'" if step else "")
                + f": command timed out after {timeout:.0f} s: {display}"
            ) from None
        except (OSError, EOFError) as exc:
            self.close()
            raise SSHError(
                f"[{self.name}] connection lost while running: {display}: "
                f"{_reason(exc)}",
                hint="run again: every step checks its state before it changes "
                "anything",
            ) from None
        result = Result(self.name, display, code, out, err)
        if check and not result.ok:
            raise CommandFailed(result, step, display)
        return result

    def put(
        self,
        content: bytes,
        path: str,
        *,
        mode: str = "0644",
        owner: str = "root",
        group: str = "root",
    ) -> None:
        """Install a file atomically: write beside it, set owner and mode, rename."""
        sftp = self._sftp_client()
        temporary = f"{path}.psa-infra.tmp"
        try:
            with sftp.open(temporary, "wb") as handle:
                handle.chmod(0o600)
                handle.write(content)
        except OSError as exc:
            raise SSHError(
                f"[{self.name}] cannot write {path}: {_reason(exc)}"
            ) from None
        self.run(
            f"chown {quote(owner)}:{quote(group)} {quote(temporary)} && "
            f"chmod {quote(mode)} {quote(temporary)} && "
            f"mv -f {quote(temporary)} {quote(path)}",
            step=f"install {path}",
        )

    def _sftp_client(self) -> paramiko.SFTPClient:
        import paramiko

        self.connect()
        assert self._client is not None
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError) as exc:
                raise SSHError(
                    f"[{self.name}] SFTP is not available: {_reason(exc)}",
                    hint="psa-infra copies files over SFTP; enable sshd's sftp "
                    "subsystem",
                ) from None
        return self._sftp

    def read(self, path: str) -> bytes | None:
        """Return a file's content, or None when it does not exist."""
        sftp = self._sftp_client()
        buffer = io.BytesIO()
        try:
            sftp.getfo(path, buffer)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SSHError(
                f"[{self.name}] cannot read {path}: {_reason(exc)}"
            ) from None
        return buffer.getvalue()

    def host_key(self) -> paramiko.PKey | None:
        """The key the host presented."""
        if self._client is None:
            return None
        transport = self._client.get_transport()
        return transport.get_remote_server_key() if transport else None


class _Policy:
    """Record a new host's key only when the caller trusts new hosts."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        target = self.connection.target
        if not self.connection.trust_new:
            entry = KnownHosts.entry(target.address, target.port)
            raise SSHError(
                f"[{self.connection.name}] host key of {entry} is not known "
                f"({key.get_name()} {fingerprint(key)})",
                hint="psa-infra records keys of containers it creates; for a container "
                "made otherwise, check the fingerprint on its console and run again "
                "with --accept-new-host-keys",
            )
        self.connection.known_hosts.add(target.address, target.port, key)
        client.get_host_keys().add(
            KnownHosts.entry(target.address, target.port), key.get_name(), key
        )


def _load_key(path: Path) -> paramiko.PKey:
    import paramiko

    expanded = path.expanduser()
    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key_file(str(expanded))
        except FileNotFoundError:
            raise SSHError(
                f"SSH private key {expanded} does not exist",
                hint="set ssh.private_key in the inventory",
            ) from None
        except paramiko.PasswordRequiredException:
            raise SSHError(
                f"SSH private key {expanded} is protected by a passphrase",
                hint="use a key without a passphrase for automation, kept 0600",
            ) from None
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
    raise SSHError(f"SSH private key {expanded} cannot be read: {errors[-1]}")


def _collect(channel: Any, timeout: float) -> tuple[str, str, int]:
    """Read a command's output until it exits; TimeoutError past ``timeout``.

    sshd may send the exit status before the last of the output, so the
    output is read on until the end of the stream (EOF). A command that
    leaves a background process holding its output open sends no EOF: after
    ``EOF_GRACE`` seconds past the exit status, what has arrived is taken.
    """
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    exited_at: float | None = None
    channel.setblocking(False)
    while True:
        while channel.recv_ready():
            out += channel.recv(65536)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        now = time.monotonic()
        if exited_at is None and channel.exit_status_ready():
            exited_at = now
        if (
            exited_at is not None
            and (channel.eof_received or now - exited_at > EOF_GRACE)
            and not channel.recv_ready()
            and not channel.recv_stderr_ready()
        ):
            break
        remaining = deadline - now
        if remaining <= 0:
            channel.close()
            raise TimeoutError
        wait = min(remaining, 1.0 if exited_at is None else 0.05)
        select.select([channel], [], [], wait)
    code = channel.recv_exit_status()
    channel.close()
    return out.decode(errors="replace"), err.decode(errors="replace"), code


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def parallel(
    items: list[Any], work: Callable[[Any], Any], limit: int
) -> list[tuple[Any, Any, BaseException | None]]:
    """Run ``work`` on each item with at most ``limit`` at once; keep every error."""
    from concurrent.futures import ThreadPoolExecutor

    def guarded(item: Any) -> tuple[Any, Any, BaseException | None]:
        try:
            return item, work(item), None
        except Exception as exc:  # noqa: BLE001 - each host's error is reported
            return item, None, exc

    with ThreadPoolExecutor(max_workers=max(1, min(limit, len(items) or 1))) as pool:
        return list(pool.map(guarded, items))


def private_key_ok(path: Path) -> bool:
    """Whether a private key file is readable by its owner only."""
    try:
        return not os.stat(path.expanduser()).st_mode & 0o077
    except OSError:
        return False
