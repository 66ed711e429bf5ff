"""Verify configured containers with testinfra over psa-infra's own SSH layer.

Checks come from two places: every applicable playbook step (packages
installed, directories and files with their owner, mode and exact content,
services enabled and running), and what each role must leave behind that a
step alone does not prove (ports listening on the right address, the values
the daemons actually run with, the app's users and runtime).

testinfra runs its commands through :class:`SSHBackend`, so host keys are
checked as everywhere else in psa-infra. Secrets needed by a check travel on
the command's standard input, never on its command line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .errors import SSHError
from .inventory import Container, Inventory
from .playbooks import Playbook, Step
from .render import RenderedFile, Renderer
from .secrets import Secret
from .ssh import Connection, quote

PASS, FAIL, UNAVAILABLE = "pass", "fail", "unavailable"


@dataclass(frozen=True)
class Check:
    """One verified fact about one host."""

    host: str
    name: str
    status: str
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "host": self.host,
            "check": self.name,
            "status": self.status,
            "detail": self.detail,
        }


def _backend_class() -> type:
    from testinfra.backend.base import BaseBackend

    class SSHBackend(BaseBackend):  # type: ignore[misc]
        """testinfra's view of a psa-infra SSH connection."""

        NAME = "psa-infra"

        def __init__(self, connection: Connection) -> None:
            super().__init__(connection.name)
            self.connection = connection

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            text = self.get_command(command, *args)
            result = self.connection.run(text, check=False, timeout=120)
            return self.result(
                result.exit_code, self.encode(text), result.stdout, result.stderr
            )

    return SSHBackend


def testinfra_host(connection: Connection) -> Any:
    """A testinfra Host that runs its commands over ``connection``."""
    from testinfra.host import Host

    return Host(_backend_class()(connection))


class HostChecks:
    """Every check of one container."""

    def __init__(
        self,
        connection: Connection,
        container: Container,
        inventory: Inventory,
        renderer: Renderer,
        playbooks: Mapping[str, Playbook],
        secrets: Mapping[str, Secret],
    ) -> None:
        self.connection = connection
        self.container = container
        self.inventory = inventory
        self.host = testinfra_host(connection)
        self.steps = renderer.steps(container, playbooks)
        self.files: dict[str, RenderedFile] = {
            f.dest: f for f in renderer.files(container, playbooks, reveal=True)
        }
        self.secrets = secrets

    def run(self) -> list[Check]:
        """Run every check; a check that raises counts as failed."""
        checks = []
        for name, probe in self._probes():
            try:
                status, detail = probe()
            except SSHError as exc:
                status, detail = FAIL, exc.message
            checks.append(Check(self.container.hostname, name, status, detail))
        return checks

    def _probes(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        for _, step in self.steps:
            yield from self._step_probes(step)
        role = self.container.role
        yield from getattr(self, f"_{role}")()

    def _step_probes(
        self, step: Step
    ) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        if step.packages is not None:
            for package in step.packages:
                yield f"package {package}", partial(self._package, package)
        elif step.directory is not None:
            d = step.directory
            yield (
                f"directory {d.path}",
                lambda: self._owned(d.path, d.owner, d.group, d.mode, directory=True),
            )
        elif step.file is not None and step.file.dest in self.files:
            rendered = self.files[step.file.dest]
            yield f"file {rendered.dest}", lambda: self._file(rendered)
        elif step.service is not None and step.service.state != "stopped":
            service = step.service
            yield (
                f"service {service.name}",
                lambda: self._service(service.name, service.enabled),
            )

    def _package(self, name: str) -> tuple[str, str]:
        return _is(self.host.package(name).is_installed, "installed", "not installed")

    def _owned(
        self, path: str, owner: str, group: str, mode: str, directory: bool = False
    ) -> tuple[str, str]:
        item = self.host.file(path)
        if not item.exists:
            return FAIL, "missing"
        if directory and not item.is_directory:
            return FAIL, "not a directory"
        have = (item.user, item.group, item.mode)
        want = (owner, group, int(mode, 8))
        if have != want:
            return (
                FAIL,
                f"{have[0]}:{have[1]} {have[2]:04o}, want {owner}:{group} {mode}",
            )
        return PASS, f"{owner}:{group} {mode}"

    def _file(self, rendered: RenderedFile) -> tuple[str, str]:
        status, detail = self._owned(
            rendered.dest, rendered.owner, rendered.group, rendered.mode
        )
        if status != PASS:
            return status, detail
        want = hashlib.sha256(rendered.content.encode()).hexdigest()
        if self.host.file(rendered.dest).sha256sum != want:
            return FAIL, "content differs from the rendered template"
        return PASS, f"{detail}, content as rendered"

    def _service(self, name: str, enabled: bool) -> tuple[str, str]:
        service = self.host.service(name)
        if not service.is_running:
            return FAIL, "not running"
        if enabled and not service.is_enabled:
            return FAIL, "running but not enabled at boot"
        return PASS, "enabled and running" if enabled else "running"

    def _listening(self, port: int, loopback: bool = False) -> tuple[str, str]:
        address = str(self.container.address)
        socket = self.host.socket(f"tcp://{address}:{port}")
        if not socket.is_listening:
            return FAIL, f"nothing listens on {address}:{port}"
        if loopback and not self.host.socket(f"tcp://127.0.0.1:{port}").is_listening:
            return FAIL, f"nothing listens on 127.0.0.1:{port}"
        return PASS, f"listening on {address}:{port}"

    def _script(self, script: str, step: str) -> str:
        """Run a script sent on standard input; return its output."""
        result = self.connection.run(
            "bash -s", stdin=script.encode(), step=step, shown=f"({step})", check=False
        )
        if not result.ok:
            raise SSHError(
                f"[{self.container.hostname}] {step}: "
                + (result.stderr.strip().splitlines() or ["failed"])[-1]
            )
        return result.stdout.strip()

    # --- roles ------------------------------------------------------------

    def _postgresql(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        settings = self.inventory.postgresql
        psql = "runuser -u postgres -- psql -XAtq -d postgres -c"
        yield "postgresql port", lambda: self._listening(settings.port)

        def setting() -> tuple[str, str]:
            value = self.connection.run(f"{psql} 'SHOW max_connections'").stdout.strip()
            want = str(settings.max_connections)
            return _is(
                value == want, f"max_connections {value}", f"{value}, want {want}"
            )

        def database() -> tuple[str, str]:
            query = (
                "SELECT count(*) FROM pg_database d "
                "JOIN pg_roles r ON r.oid = d.datdba "
                f"WHERE d.datname = '{settings.database}' "
                f"AND r.rolname = '{settings.user}'"
            )
            found = self.connection.run(f"{psql} {quote(query)}").stdout.strip()
            return _is(
                found == "1",
                f"database {settings.database} owned by {settings.user}",
                f"no database {settings.database} owned by {settings.user}",
            )

        yield "postgresql max_connections", setting
        yield "postgresql app database", database

    def _redis(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        port = self.inventory.redis.port
        address = str(self.container.address)
        yield "redis port", lambda: self._listening(port, loopback=True)

        def refuses_anonymous() -> tuple[str, str]:
            reply = self.connection.run(
                f"redis-cli -h {quote(address)} -p {port} PING", check=False
            ).stdout.strip()
            return _is("NOAUTH" in reply, "asks for a password", f"answered {reply!r}")

        def policy() -> tuple[str, str]:
            password = self.secrets["redis_password"].reveal()
            reply = self._script(
                f"export REDISCLI_AUTH={quote(password)}\n"
                f"redis-cli --no-auth-warning -h {quote(address)} -p {port} "
                "CONFIG GET maxmemory-policy | tail -n 1\n",
                "redis maxmemory-policy",
            )
            want = self.inventory.redis.maxmemory_policy
            return _is(reply == want, f"password accepted, policy {reply}", reply)

        yield "redis requires a password", refuses_anonymous
        yield "redis app password and policy", policy

    def _rabbitmq(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        settings = self.inventory.rabbitmq
        yield "rabbitmq port", lambda: self._listening(settings.port)

        def users() -> tuple[str, str]:
            names = self.connection.run("rabbitmqctl -s list_users").stdout.split()
            if "guest" in names:
                return FAIL, "the guest user exists"
            return _is(
                settings.user in names,
                f"{settings.user} present, no guest",
                f"no user {settings.user}",
            )

        def login() -> tuple[str, str]:
            password = self.secrets["rabbitmq_password"].reveal()
            self._script(
                f"printf '%s' {quote(password)} | rabbitmqctl -s authenticate_user "
                f"{quote(settings.user)}\n",
                "rabbitmq app login",
            )
            return PASS, f"{settings.user} logs in with its password"

        def vhost() -> tuple[str, str]:
            names = self.connection.run(
                "rabbitmqctl -s list_vhosts name"
            ).stdout.split()
            return _is(settings.vhost in names, f"vhost {settings.vhost}", "no vhost")

        yield "rabbitmq users", users
        yield "rabbitmq app login", login
        yield "rabbitmq vhost", vhost

    def _elasticsearch(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        if self.inventory.packages.elasticsearch == "none":
            yield (
                "elasticsearch service",
                lambda: (
                    UNAVAILABLE,
                    "not installed: packages.elasticsearch is 'none' (no package "
                    "source is reachable); its configuration is checked above",
                ),
            )
            return
        yield (
            "elasticsearch port",
            lambda: self._listening(self.inventory.elasticsearch.port),
        )

    def _app(self) -> Iterator[tuple[str, Callable[[], tuple[str, str]]]]:
        root = self.inventory.app.root
        want = [
            name
            for name in self.inventory.app.services
            if name in self.container.services
        ]

        def node() -> tuple[str, str]:
            version = self.connection.run("node --version").stdout.strip()
            major = int(version.lstrip("v").split(".")[0] or 0)
            floor = 20 if self.inventory.packages.nodejs == "nodesource" else 18
            return _is(
                major >= floor, f"node {version}", f"node {version}, want >= {floor}"
            )

        def ecosystem() -> tuple[str, str]:
            path = json.dumps(root + "/ecosystem.config.js")
            script = (
                f"const apps = require({path}).apps;"
                "console.log(JSON.stringify(apps.map(a => [a.name, a.instances])));"
            )
            loaded = json.loads(
                self.connection.run(f"node -e {quote(script)}").stdout.strip()
            )
            names = [name for name, _ in loaded]
            return _is(
                names == want, f"apps {', '.join(names)}", f"apps {names}, want {want}"
            )

        def pm2() -> tuple[str, str]:
            pm2 = "runuser -u psa -- env PM2_HOME=/var/lib/psa/.pm2 pm2"
            modules = self.connection.run(f"{pm2} jlist").stdout
            conf = self.connection.run(
                f"{pm2} conf pm2-logrotate:max_size", check=False
            ).stdout
            size = self.inventory.app.log_max_size
            ok = "pm2-logrotate" in modules and size in conf
            return _is(ok, f"pm2-logrotate at {size}", "pm2-logrotate missing or unset")

        def reaches() -> tuple[str, str]:
            from .hosts import data_endpoints

            down = [
                f"{name} {address}:{port}"
                for name, address, port in data_endpoints(self.inventory)
                if not self.connection.run(
                    f"timeout 3 bash -c {quote(f'</dev/tcp/{address}/{port}')}",
                    check=False,
                ).ok
            ]
            return _is(
                not down,
                "reaches every data service",
                "cannot reach " + ", ".join(down),
            )

        yield "node runtime", node
        yield "pm2 ecosystem loads", ecosystem
        yield "pm2 log rotation", pm2
        yield "data services reachable", reaches


def _is(ok: bool, good: str, bad: str) -> tuple[str, str]:
    return (PASS, good) if ok else (FAIL, bad)
