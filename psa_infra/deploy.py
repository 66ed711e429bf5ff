"""Deploy a packaged release to the app containers, with health and rollback.

For each app container that runs services, one after the other:

1. upload the artifact (skipped when that release is already unpacked there),
   check its SHA-256, unpack it into ``releases/<version>.partial``, check
   every file against the manifest, and rename it to ``releases/<version>``;
2. point ``current`` at it atomically (a new link renamed over the old one);
3. ``pm2 startOrReload`` the container's ecosystem: a graceful reload of each
   running PM2 app (new instances first, old ones finish their requests), and
   a start of the ones not running yet;
4. wait until every service on the container answers ``/health`` with 200 and
   reports the new version; then ``pm2 save`` and prune old releases.

When a service does not become healthy, ``current`` goes back to the previous
release, PM2 reloads again, and the deploy stops with an error saying so. The
containers' configs (``.env``, ecosystem, upstream map) are brought up to
date by the app playbook before the switch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PsaInfraError, SSHError
from .inventory import Container, Inventory
from .release import MANIFEST_NAME, Artifact, checksum_list
from .ssh import Connection, quote

log = logging.getLogger(__name__)

PM2 = "runuser -u psa -- env PM2_HOME=/var/lib/psa/.pm2 pm2"
KEEP_RELEASES = 5
HISTORY = ".history"
HEALTH_TIMEOUT = 90.0


class DeployError(PsaInfraError):
    """A release could not be deployed; the message says what state it left."""


@dataclass
class ServiceHealth:
    """One service's answer to /health on one container."""

    host: str
    service: str
    port: int
    status: str
    version: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "up"

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "service": self.service,
            "port": self.port,
            "status": self.status,
            "version": self.version,
            "detail": self.detail,
        }


@dataclass
class HostDeploy:
    """What a deploy did on one container."""

    host: str
    version: str
    previous: str | None = None
    uploaded: bool = False
    result: str = ""
    seconds: float = 0.0
    health: list[ServiceHealth] = field(default_factory=list)


def _services(inventory: Inventory, container: Container) -> list[str]:
    return [n for n in inventory.app.services if n in container.services]


def health_of(
    connection: Connection, inventory: Inventory, container: Container
) -> list[ServiceHealth]:
    """Ask every service on a container for its health, in one command."""
    names = _services(inventory, container)
    script = "".join(
        f"printf '%s\\t' {quote(n)}; curl -s -m 3 -o /tmp/psa-health.$$ "
        f"-w '%{{http_code}}' http://127.0.0.1:{container.services[n].port}/health; "
        "printf '\\t'; tr -d '\\n\\t' < /tmp/psa-health.$$ 2>/dev/null; echo\n"
        for n in names
    )
    script += "rm -f /tmp/psa-health.$$\n"
    result = connection.run("bash -s", stdin=script.encode(), shown="(read /health)")
    found: list[ServiceHealth] = []
    for line in result.stdout.splitlines():
        name, _, rest = line.partition("\t")
        code, _, body = rest.partition("\t")
        if name not in container.services:
            continue
        port = container.services[name].port
        try:
            answer = json.loads(body) if body else {}
        except json.JSONDecodeError:
            answer = {}
        version = str(answer.get("version", "")) if isinstance(answer, dict) else ""
        if code == "200":
            found.append(ServiceHealth(container.hostname, name, port, "up", version))
        else:
            detail = "not answering" if code in ("", "000") else f"HTTP {code}"
            broken = answer.get("dependencies") if isinstance(answer, dict) else None
            if isinstance(broken, dict):
                down = [
                    k
                    for k, v in broken.items()
                    if isinstance(v, dict) and v.get("status") != "ok"
                ]
                if down:
                    detail += f"; {', '.join(down)} down"
            found.append(
                ServiceHealth(container.hostname, name, port, "down", version, detail)
            )
    return found


class Deployer:
    """Deploy one artifact to one container over one connection."""

    def __init__(
        self,
        connection: Connection,
        inventory: Inventory,
        container: Container,
        artifact: Artifact | None,
        only: Sequence[str] = (),
        progress: Callable[[str, str], None] | None = None,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        self.c = connection
        self.inventory = inventory
        self.container = container
        self.artifact = artifact
        self.only = [s for s in only if s in container.services]
        self.say = progress or (lambda host, text: log.info("[%s] %s", host, text))
        self.health_timeout = health_timeout
        self.root = inventory.app.root

    @property
    def host(self) -> str:
        return self.container.hostname

    def run(self) -> HostDeploy:
        """Deploy the artifact here; roll back and raise when it is not healthy."""
        assert self.artifact is not None
        started = time.monotonic()
        version = self.artifact.version
        report = HostDeploy(self.host, version)
        missing = [
            n for n in self.container.services if n not in self.artifact.services
        ]
        if missing:
            raise DeployError(
                f"[{self.host}] release {version} has no service "
                f"{', '.join(missing)}, which the inventory places here"
            )
        report.previous = self._current()
        report.uploaded = self._install()
        self._switch(version)
        self.say(self.host, f"reloading PM2 on release {version}")
        try:
            self._reload()
            report.health = self._wait_healthy(version)
        except (DeployError, SSHError) as exc:
            report.result = "rolled back" if report.previous else "failed"
            self._roll_back(report.previous, exc)
            raise  # unreachable: _roll_back raises
        self.c.run(f"{PM2} save --force >/dev/null", step="pm2 save")
        self._record(version)
        self._prune(version, report.previous)
        report.result = "deployed" if report.previous != version else "unchanged"
        report.seconds = time.monotonic() - started
        return report

    def _current(self) -> str | None:
        done = self.c.run(
            f"readlink {quote(self.root + '/current')}",
            check=False,
            step="read current",
        )
        target = done.stdout.strip()
        return target.rsplit("/", 1)[-1] if done.ok and target else None

    def _install(self) -> bool:
        """Unpack the release unless it already is; return whether it was uploaded."""
        assert self.artifact is not None
        version = self.artifact.version
        release = f"{self.root}/releases/{version}"
        manifest = f"{release}/{MANIFEST_NAME}"
        if self.c.run(f"test -f {quote(manifest)}", check=False).ok:
            self.say(self.host, f"release {version} already unpacked")
            return False
        self.say(self.host, f"uploading release {version}")
        incoming = f"{self.root}/releases/.incoming-{version}.tar.gz"
        sums = f"{self.root}/releases/.incoming-{version}.sha256"
        self.c.put(self.artifact.archive.read_bytes(), incoming, mode="0600")
        self.c.put(checksum_list(self.artifact).encode(), sums, mode="0600")
        partial = f"{release}.partial"
        script = (
            "set -e\n"
            f"echo {quote(self.artifact.sha256 + '  ' + incoming)}"
            " | sha256sum -c --quiet\n"
            f"rm -rf {quote(partial)}\n"
            f"mkdir -p {quote(partial)}\n"
            f"tar -xzf {quote(incoming)} -C {quote(partial)} --no-same-owner\n"
            f"(cd {quote(partial)} && sha256sum -c --quiet --strict {quote(sums)})\n"
            f"chown -R root:psa {quote(partial)}\n"
            f"chmod -R g+rX,o-rwx {quote(partial)}\n"
            f"mv -T {quote(partial)} {quote(release)}\n"
            f"rm -f {quote(incoming)} {quote(sums)}\n"
        )
        self.c.run(
            "bash -s",
            stdin=script.encode(),
            step="unpack release",
            shown=f"(check and unpack release {version})",
            timeout=600,
        )
        return True

    def _switch(self, version: str) -> None:
        link = f"{self.root}/current"
        self.c.run(
            f"ln -sfn releases/{quote(version)} {quote(link + '.new')} && "
            f"mv -Tf {quote(link + '.new')} {quote(link)}",
            step="switch current",
        )

    def _reload(self) -> None:
        only = f" --only {quote(','.join(self.only))}" if self.only else ""
        self.c.run(
            f"{PM2} startOrReload {quote(self.root + '/ecosystem.config.js')}"
            f" --update-env{only}",
            step="pm2 reload",
            timeout=600,
        )

    def _wait_healthy(self, version: str) -> list[ServiceHealth]:
        deadline = time.monotonic() + self.health_timeout
        wanted = set(self.only or self.container.services)
        while True:
            health = [
                h
                for h in health_of(self.c, self.inventory, self.container)
                if h.service in wanted
            ]
            stale = [h for h in health if h.ok and h.version != version]
            bad = [h for h in health if not h.ok] + stale
            if not bad and health:
                return health
            if time.monotonic() > deadline:
                detail = "; ".join(
                    f"{h.service} {h.detail or 'still on ' + (h.version or '?')}"
                    for h in bad
                )
                raise DeployError(
                    f"[{self.host}] release {version} did not become healthy within "
                    f"{self.health_timeout:.0f} s: {detail}"
                )
            time.sleep(1)

    def _roll_back(self, previous: str | None, cause: PsaInfraError) -> None:
        if previous is None:
            raise DeployError(
                f"{cause.message}; there is no earlier release to go back to",
                hint="fix the release and deploy again",
            )
        self.say(self.host, f"rolling back to release {previous}")
        self._switch(previous)
        try:
            self._reload()
            self._wait_healthy(previous)
        except PsaInfraError as again:
            raise DeployError(
                f"{cause.message}; rolling back to {previous} failed too: "
                f"{again.message}",
                hint="check the services with psa-infra health and the PM2 logs",
            ) from None
        self.c.run(f"{PM2} save --force >/dev/null", step="pm2 save")
        raise DeployError(
            f"{cause.message}; rolled back to release {previous}, which is healthy",
            hint="the failed release stays unpacked for inspection; fix it and "
            "deploy a new version",
        )

    def _record(self, version: str) -> None:
        """Append to the history that rollback reads."""
        history = quote(f"{self.root}/releases/{HISTORY}")
        self.c.run(f"echo {quote(version)} >> {history}", step="record release")

    def roll_back_by_hand(self) -> tuple[str, str]:
        """Go back to the release deployed before the current one."""
        current = self._current()
        done = self.c.run(
            f"cat {quote(f'{self.root}/releases/{HISTORY}')}", check=False
        )
        present = set(releases_on(self.c, self.root))
        earlier = [
            v for v in reversed(done.stdout.split()) if v != current and v in present
        ]
        if current is None or not earlier:
            raise DeployError(
                f"[{self.host}] there is no earlier release to roll back to"
                + (f" (current: {current})" if current else "")
            )
        target = earlier[0]
        self.say(self.host, f"rolling back from {current} to {target}")
        self._switch(target)
        self._reload()
        self._wait_healthy(target)
        self.c.run(f"{PM2} save --force >/dev/null", step="pm2 save")
        self._record(target)
        return current, target

    def _prune(self, current: str, previous: str | None) -> None:
        keep = {current, previous} - {None}
        script = (
            f"cd {quote(self.root + '/releases')} && "
            f"ls -1t | grep -v '^\\.' | tail -n +{KEEP_RELEASES + 1}"
        )
        old = self.c.run(script, check=False).stdout.split()
        doomed = [v for v in old if v not in keep]
        if doomed:
            paths = " ".join(quote(f"{self.root}/releases/{v}") for v in doomed)
            self.c.run(f"rm -rf {paths}", step="prune releases")


def releases_on(connection: Connection, root: str) -> list[str]:
    """Releases unpacked on a container, newest first."""
    done = connection.run(
        f"cd {quote(root + '/releases')} 2>/dev/null && "
        f"ls -1t | grep -v '^\\.' | grep -v '\\.partial$'",
        check=False,
    )
    return done.stdout.split()
