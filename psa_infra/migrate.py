"""Move one service from a shared app container to its own, with no downtime.

A migration is a fixed list of steps. Before each step the journal records
it as running, and after it as done, atomically (see
:mod:`psa_infra.placement`), so a migration stopped anywhere, even by a
killed process, can go on (``resume``) or be undone (``roll_back``). Every
step reads its state first, so running one again is safe.

The journal's *stage* is what the rest of psa-infra sees: the layout with
the service staged on its new container, routed there by the gateway, or
moved off the old container. A step changes the stage in the journal first
and then brings the hosts to it, so the hosts never run ahead of the record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checks import connection_budget
from .deploy import PM2, Deployer, health_of
from .errors import MigrationError, PsaInfraError, SSHError
from .hosts import configure_hosts, target_of
from .inventory import Container, LoadedInventory
from .placement import (
    GATEWAY,
    JOURNAL_FORMAT,
    Move,
    journals_dir,
    moves_of,
    read_journal,
    with_moves,
    write_journal,
)
from .playbooks import Playbook
from .provision import Applier, read_plan, task_since
from .proxmox import Client
from .release import Artifact, load_artifact
from .render import Renderer
from .secrets import Secret
from .ssh import Connection, KnownHosts, quote

log = logging.getLogger(__name__)

STEPS: tuple[tuple[str, str], ...] = (
    ("preflight", "check the new container, the node, the release and the service"),
    ("snapshot", "snapshot the old container"),
    ("container", "create or adopt the new container"),
    ("setup", "set up the app role on the new container"),
    ("deploy", "deploy the current release there with only this service"),
    ("route", "point the gateway at the new container"),
    ("retire", "stop the service on the old container"),
    ("verify", "check every service through the gateway"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)
# Storage types whose container volumes PVE can snapshot.
SNAPSHOT_STORAGE = ("lvmthin", "zfspool", "rbd", "btrfs")
ROUTE_TIMEOUT = 30.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Setting:
    """Everything a migration works with, read before its first step."""

    root: Path
    state: Path
    source: LoadedInventory  # the file's layout, without any move
    target: LoadedInventory  # the layout the service moves to
    secrets: dict[str, Secret]
    playbooks: dict[str, Playbook]
    known_hosts: KnownHosts
    public_key: str | None
    client_factory: Callable[[], Client]
    releases: Path
    templates: Path
    task_timeout: float = 600.0
    health_timeout: float = 90.0
    accept_new_keys: bool = False
    say: Callable[[str], None] = field(default=lambda text: log.info("%s", text))


class Journal:
    """One service's migration journal, written atomically after each change."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def read(cls, path: Path) -> Journal | None:
        return cls(path, read_journal(path)) if path.exists() else None

    def save(self) -> None:
        self.data["updated"] = now()
        write_journal(self.path, self.data)

    @property
    def done(self) -> list[str]:
        return list(self.data.get("done", []))

    @property
    def running(self) -> str | None:
        return self.data.get("running")

    @property
    def stage(self) -> str:
        return str(self.data.get("stage", "none"))

    @property
    def status(self) -> str:
        return str(self.data.get("status", ""))

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def begin(self, step: str) -> None:
        self.set(running=step, status="running")

    def finish(self, step: str) -> None:
        done = [s for s in self.done if s != step] + [step]
        self.set(done=done, running=None)

    def undone(self, step: str) -> None:
        self.set(done=[s for s in self.done if s != step], running=None)

    @property
    def move(self) -> Move:
        target = Container.model_validate(self.data["target"]["container"])
        return Move(
            self.data["service"], self.data["source"]["hostname"], target, self.stage
        )


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the migration lock of one inventory; a second run stops at once."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrationError(
                f"another psa-infra migration of this inventory is running "
                f"(it holds {folder / '.lock'})",
                hint="wait for it to end; if it was killed, the lock is already free",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Migration:
    """Migrate one service of an inventory to the target layout's container."""

    def __init__(self, setting: Setting, service: str) -> None:
        self.s = setting
        self.service = service
        self.folder = journals_dir(setting.state, setting.source.inventory.name)
        self.path = self.folder / f"{service}.json"
        self.journal = Journal.read(self.path)
        self.others = moves_of(setting.state, setting.source.inventory.name, service)
        self._artifact: Artifact | None = None

    # ------------------------------------------------------------- layouts

    def layout(self, stage: str) -> LoadedInventory:
        """The layout with the other recorded moves and this one at ``stage``."""
        moves = list(self.others)
        if stage != "none":
            assert self.journal is not None
            moves.append(Move(self.service, self.old.hostname, self.new, stage))
        return with_moves(self.s.source, moves)

    @property
    def old(self) -> Container:
        assert self.journal is not None
        name = self.journal.data["source"]["hostname"]
        return next(
            c for c in self.layout_before().inventory.containers if c.hostname == name
        )

    @property
    def new(self) -> Container:
        assert self.journal is not None
        return Container.model_validate(self.journal.data["target"]["container"])

    def layout_before(self) -> LoadedInventory:
        return with_moves(self.s.source, self.others)

    def renderer(self, loaded: LoadedInventory) -> Renderer:
        return Renderer(self.s.templates, loaded, self.s.secrets, self.s.public_key)

    # ------------------------------------------------------------- planning

    def describe(self) -> list[tuple[str, str]]:
        """What each step would change, read from the layouts (no host is read)."""
        old, new = self.find_places()
        lines = []
        for name, text in STEPS:
            if self.journal and name in self.journal.done:
                lines.append((name, "done"))
                continue
            detail = {
                "preflight": f"{self.service} on {old.hostname} ({old.vmid}) -> "
                f"{new.hostname} ({new.vmid}, {new.address}, {new.cores} cores, "
                f"{new.memory} MiB, {new.disk} GiB)",
                "snapshot": f"snapshot of {old.hostname} ({old.vmid}) when its "
                "storage supports it",
                "container": f"create {new.hostname} ({new.vmid}) unless it exists "
                "and matches",
                "setup": f"app role on {new.hostname}: Node.js, PM2, .env, an "
                f"ecosystem with only {self.service}",
                "deploy": f"the release current on {old.hostname}, {self.service} "
                f"only ({new.services[self.service].instances} instances), health on "
                f"{new.address}:{new.services[self.service].port}",
                "route": self._route_text(old, new),
                "retire": (
                    f"{old.hostname} keeps a forwarding gateway on its address"
                    if self.service == GATEWAY
                    else f"pm2 delete {self.service} on {old.hostname}; its "
                    "ecosystem without it"
                ),
                "verify": "every service's health through the gateway; record the "
                "placement",
            }[name]
            lines.append((name, f"{text}: {detail}"))
        return lines

    def _route_text(self, old: Container, new: Container) -> str:
        if self.service == GATEWAY:
            return (
                f"the gateway on {old.hostname} forwards every request to "
                f"{new.address}:{new.services[GATEWAY].port}"
            )
        return (
            f"upstream map: {self.service} -> {new.address}:"
            f"{new.services[self.service].port}, SIGHUP to the gateway"
        )

    def find_places(self) -> tuple[Container, Container]:
        """The service's current container and its container in the target."""
        if self.journal is not None:
            return self.old, self.new
        before = self.layout_before().inventory
        source = self.s.source.inventory
        if self.service not in source.app.services:
            raise MigrationError(
                f"no service '{self.service}' in {self.s.source.path} "
                f"({', '.join(source.app.services)})"
            )
        holders = [
            c for c in self.s.target.inventory.containers if self.service in c.services
        ]
        if not holders:
            raise MigrationError(
                f"{self.s.target.path} places '{self.service}' on no container",
            )
        new = holders[0]
        old = before.placement().get(self.service)
        if old is None:
            raise MigrationError(
                f"'{self.service}' runs on no container of {self.s.source.path}"
            )
        return old, new

    # ------------------------------------------------------------- running

    def start(self) -> None:
        """Create the journal of a new migration."""
        old, new = self.find_places()
        if old.hostname == new.hostname:
            raise MigrationError(
                f"'{self.service}' already runs on {new.hostname} in "
                f"{self.s.source.path}; there is nothing to migrate"
            )
        self.journal = Journal(
            self.path,
            {
                "format": JOURNAL_FORMAT,
                "service": self.service,
                "inventory": str(self.s.source.path),
                "target_inventory": str(self.s.target.path),
                "source": {
                    "hostname": old.hostname,
                    "vmid": old.vmid,
                    "address": str(old.address),
                },
                "target": {"container": new.model_dump(mode="json")},
                "stage": "none",
                "status": "running",
                "done": [],
                "running": None,
                "started": now(),
            },
        )
        self.journal.save()

    def run(self) -> None:
        """Carry out every step not done yet; on failure leave a safe state."""
        assert self.journal is not None
        for name in STEP_NAMES:
            if name in self.journal.done:
                continue
            self.s.say(f"{name}: {dict(STEPS)[name]}")
            self.journal.begin(name)
            started = time.monotonic()
            try:
                getattr(self, "_do_" + name)()
            except PsaInfraError as exc:
                self._failed(name, exc)
            took = round(time.monotonic() - started, 2)
            seconds = dict(self.journal.data.get("seconds") or {})
            seconds[name] = took
            self.journal.data["seconds"] = seconds
            self.journal.finish(name)
            log.info("%s took %.1f s", name, took)
        self.journal.set(status="done", finished=now(), error=None)

    def _failed(self, step: str, exc: PsaInfraError) -> None:
        """Stop: after the gateway was re-pointed, point it back first."""
        assert self.journal is not None
        message = f"migration of {self.service} stopped in step '{step}': {exc.message}"
        back = ""
        if "route" in self.journal.done or step == "route":
            try:
                for name in ("verify", "retire", "route"):
                    if name in self.journal.done or name == step:
                        self._undo(name)
                        self.journal.undone(name)
                back = (
                    f"; the gateway sends {self.service} to {self.old.hostname} again"
                )
            except PsaInfraError as again:
                back = f"; pointing the gateway back failed too: {again.message}"
        self.journal.set(status="failed", error=exc.message + back, running=None)
        raise MigrationError(
            message + back,
            hint=(exc.hint + "; then " if exc.hint else "fix that, then ")
            + f"psa-infra migrate-service {self.service} --resume (or --rollback)",
        ) from None

    def roll_back(self) -> None:
        """Undo every step done (and the one that was running), last first."""
        assert self.journal is not None
        steps = self.journal.done
        if self.journal.running and self.journal.running not in steps:
            steps.append(self.journal.running)
        self.journal.set(status="rolling back")
        for name in reversed(STEP_NAMES):
            if name not in steps:
                continue
            self.s.say(f"undo {name}")
            self.journal.set(running=name)
            try:
                self._undo(name)
            except PsaInfraError as exc:
                self.journal.set(status="rollback failed", error=exc.message)
                raise MigrationError(
                    f"rolling back the migration of {self.service} stopped at step "
                    f"'{name}': {exc.message}",
                    hint=f"fix that, then psa-infra migrate-service {self.service} "
                    "--rollback again",
                ) from None
            self.journal.undone(name)
        self.journal.set(status="rolled back", stage="none", finished=now())
        history = self.folder / "history"
        history.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.path.replace(history / f"{self.service}-{stamp}.json")

    def _undo(self, step: str) -> None:
        undo = getattr(self, "_undo_" + step, None)
        if undo is not None:
            undo()

    # ------------------------------------------------------------- connections

    def connect(self, container: Container, loaded: LoadedInventory) -> Connection:
        created = bool(self.journal and self.journal.data.get("created"))
        return Connection(
            target_of(loaded.inventory, container),
            self.s.known_hosts,
            trust_new=self.s.accept_new_keys
            or (created and container.hostname == self.new.hostname),
            connect_deadline=60.0,
        )

    def client(self) -> Client:
        return self.s.client_factory()

    def node(self) -> str:
        return self.s.source.inventory.node_of(self.old)

    # ------------------------------------------------------------- steps

    def _do_preflight(self) -> None:
        assert self.journal is not None
        old, new = self.old, self.new
        problems: list[str] = []
        staged = self.layout("staged").inventory
        for container in self.layout_before().inventory.containers:
            if container.hostname == new.hostname:
                continue
            for attribute in ("vmid", "address"):
                if getattr(container, attribute) == getattr(new, attribute):
                    problems.append(
                        f"{attribute} {getattr(new, attribute)} of {new.hostname} "
                        f"({self.s.target.path}) is {container.hostname}'s in "
                        f"{self.s.source.path}"
                    )
        _, _, needed = connection_budget(staged)
        most = staged.postgresql.max_connections
        if needed > most:
            problems.append(
                f"while {self.service} runs in both places the services may open "
                f"{needed} PostgreSQL connections (with the reserve), more than "
                f"max_connections {most} in {self.s.source.path}; raise it (a "
                "PostgreSQL restart) before migrating"
            )
        client = self.client()
        try:
            loaded = self.layout("staged")
            _, cluster, diff, found, _ = read_plan(
                client, loaded, self.renderer(loaded), only=[new.hostname]
            )
            problems += found
            problems += self._capacity(client, new, cluster)
            snapshot = self._snapshot_support(client, old)
        finally:
            client.close()
        actions = [a.kind for a in diff.for_host(new.hostname)]
        if "replace" in actions:
            problems.append(
                f"{new.hostname} ({new.vmid}) exists but cannot be changed into the "
                "container the target layout describes without being replaced"
            )
        with self.connect(old, self.layout_before()) as connection:
            current = (
                connection.run(
                    f"readlink {quote(self.s.source.inventory.app.root + '/current')}",
                    check=False,
                )
                .stdout.strip()
                .rsplit("/", 1)[-1]
            )
            health = [
                h
                for h in health_of(connection, self.layout_before().inventory, old)
                if h.service == self.service
            ]
        if not current:
            problems.append(f"{old.hostname} has no deployed release")
        if not health or not health[0].ok:
            detail = health[0].detail if health else "not found"
            problems.append(
                f"{self.service} on {old.hostname} is not healthy ({detail}); "
                "migrate a healthy service"
            )
        if current and not problems:
            self._artifact = self.artifact(current)
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            raise MigrationError(
                f"preflight found {len(problems)} problem"
                f"{'s' if len(problems) > 1 else ''}; nothing was changed:\n{listed}"
            )
        self.journal.set(
            release=current,
            node=self.node(),
            snapshot_supported=snapshot,
            container_actions=actions,
        )

    def _capacity(self, client: Client, new: Container, cluster: Any) -> list[str]:
        node = self.s.target.inventory.node_of(new)
        if not cluster.nodes.get(node):
            return []  # read_plan has said so
        status = client.get(f"/nodes/{node}/status") or {}
        total = int((status.get("memory") or {}).get("total", 0)) // (1024 * 1024)
        cpus = int((status.get("cpuinfo") or {}).get("cpus", 0))
        problems = []
        if total and new.memory > total:
            problems.append(
                f"{new.hostname} needs {new.memory} MiB, node {node} has {total} MiB"
            )
        if cpus and new.cores > cpus:
            problems.append(
                f"{new.hostname} needs {new.cores} cores, node {node} has {cpus}"
            )
        return problems

    def _snapshot_support(self, client: Client, old: Container) -> str | None:
        """The reason a snapshot cannot be taken, or None when it can."""
        node = self.node()
        config = client.get(f"/nodes/{node}/lxc/{old.vmid}/config") or {}
        volumes = [
            str(v).split(",")[0]
            for k, v in config.items()
            if k == "rootfs" or (k.startswith("mp") and k[2:].isdigit())
        ]
        for volume in volumes:
            storage = volume.split(":")[0]
            kind = (client.get(f"/storage/{storage}") or {}).get("type", "")
            if kind not in SNAPSHOT_STORAGE:
                return f"storage {storage} ({kind}) cannot snapshot containers"
        return None

    def artifact(self, version: str) -> Artifact:
        if self._artifact is not None and self._artifact.version == version:
            return self._artifact
        found = sorted(self.s.releases.glob(f"*-{version}.tar.gz"))
        if not found:
            raise MigrationError(
                f"release {version}, current on {self.old.hostname}, is not in "
                f"{self.s.releases}",
                hint=f"pass the folder that holds it with --releases, or package it "
                f"again: psa-infra package --version {version}",
            )
        self._artifact = load_artifact(found[0])
        return self._artifact

    def _do_snapshot(self) -> None:
        assert self.journal is not None
        why = self.journal.data.get("snapshot_supported")
        if why:
            self.s.say(f"no snapshot: {why}")
            return
        old, node = self.old, self.node()
        name = (
            self.journal.data.get("snapshot")
            or (f"psa-pre-{self.service}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}")[
                :40
            ]
        )
        self.journal.set(snapshot=name)
        client = self.client()
        try:
            base = f"/nodes/{node}/lxc/{old.vmid}/snapshot"
            have = {s.get("name") for s in client.get(base) or []}
            if name in have:
                return
            upid = client.post(
                base,
                {
                    "snapname": name,
                    "description": f"psa-infra: before migrating {self.service}",
                },
                resolve=task_since(client, node, old.vmid, "vzsnapshot"),
            )
            client.wait_task(
                str(upid), f"snapshot {old.hostname} ({old.vmid})", self.s.task_timeout
            )
        finally:
            client.close()

    def _undo_snapshot(self) -> None:
        assert self.journal is not None
        name = self.journal.data.get("snapshot")
        if not name:
            return
        node, old = self.node(), self.old
        client = self.client()
        try:
            base = f"/nodes/{node}/lxc/{old.vmid}/snapshot"
            if name not in {s.get("name") for s in client.get(base) or []}:
                return
            upid = client.delete(f"{base}/{name}")
            client.wait_task(
                str(upid),
                f"delete snapshot {name} of {old.hostname}",
                self.s.task_timeout,
            )
        finally:
            client.close()

    def _do_container(self) -> None:
        assert self.journal is not None
        new = self.new
        loaded = self.layout("staged")
        client = self.client()
        try:
            _, _, diff, problems, _ = read_plan(
                client, loaded, self.renderer(loaded), only=[new.hostname]
            )
            if problems:
                raise MigrationError(
                    "the new container cannot be made: " + "; ".join(problems)
                )
            actions = diff.for_host(new.hostname)
            kinds = {a.kind for a in actions}
            if "replace" in kinds:
                raise MigrationError(
                    f"{new.hostname} ({new.vmid}) exists but differs in what only a "
                    "replacement changes; psa-infra never replaces it during a "
                    "migration",
                    hint=f"psa-infra plan {self.s.target.path} shows the difference",
                )
            if "create" in kinds:
                # Recorded before the request: an interrupted create is ours to
                # remove on rollback.
                self.journal.set(created=True)
                self.s.known_hosts.forget(str(new.address))
            if actions:
                self.s.say(f"{new.hostname}: " + ", ".join(sorted(kinds)))
                outcomes = Applier(
                    client,
                    loaded,
                    self.s.task_timeout,
                    lambda host, text: log.info("[%s] %s", host, text),
                ).run(diff, 1)
                failed = [o for o in outcomes if o.error]
                if failed:
                    raise MigrationError(f"{new.hostname}: {failed[0].error}")
            self._start_if_stopped(client, loaded)
        finally:
            client.close()

    def _start_if_stopped(self, client: Client, loaded: LoadedInventory) -> None:
        new = self.new
        node = loaded.inventory.node_of(new)
        status = client.get(f"/nodes/{node}/lxc/{new.vmid}/status/current") or {}
        if status.get("status") == "running":
            return
        upid = client.post(
            f"/nodes/{node}/lxc/{new.vmid}/status/start",
            resolve=task_since(client, node, new.vmid, "vzstart"),
        )
        client.wait_task(str(upid), f"start {new.hostname}", self.s.task_timeout)

    def _undo_container(self) -> None:
        assert self.journal is not None
        if not self.journal.data.get("created"):
            return
        new = self.new
        node = self.s.target.inventory.node_of(new)
        client = self.client()
        try:
            base = f"/nodes/{node}/lxc/{new.vmid}"
            present = {
                int(r["vmid"])
                for r in client.get("/cluster/resources", {"type": "vm"}) or []
            }
            if new.vmid not in present:
                return
            config = client.get(base + "/config") or {}
            if config.get("hostname") != new.hostname:
                raise MigrationError(
                    f"container {new.vmid} is not {new.hostname} any more "
                    f"(it is {config.get('hostname')}); it is left alone"
                )
            self._wait_unlocked(client, base, new)
            status = client.get(base + "/status/current") or {}
            if status.get("status") == "running":
                upid = client.post(
                    base + "/status/stop",
                    resolve=task_since(client, node, new.vmid, "vzstop"),
                )
                client.wait_task(str(upid), f"stop {new.hostname}", self.s.task_timeout)
            upid = client.delete(base, {"purge": 1, "destroy-unreferenced-disks": 1})
            client.wait_task(str(upid), f"destroy {new.hostname}", self.s.task_timeout)
        finally:
            client.close()
        self.s.known_hosts.forget(str(new.address))
        self.journal.set(created=False)

    def _wait_unlocked(self, client: Client, base: str, new: Container) -> None:
        """Wait for a task left running by an interrupted run (a create)."""
        deadline = time.monotonic() + self.s.task_timeout
        while (client.get(base + "/config") or {}).get("lock"):
            if time.monotonic() > deadline:
                raise MigrationError(f"{new.hostname} stays locked by a running task")
            time.sleep(1)

    def _do_setup(self) -> None:
        assert self.journal is not None
        self.journal.set(stage="staged")
        self._configure(self.layout("staged"), [self.new])

    def _configure(self, loaded: LoadedInventory, containers: list[Container]) -> None:
        trusted = frozenset(
            [self.new.hostname]
            if self.journal and self.journal.data.get("created")
            else []
        )
        reports = configure_hosts(
            loaded,
            self.renderer(loaded),
            self.s.playbooks,
            self.s.known_hosts,
            containers=containers,
            trust_new=trusted,
            accept_new_keys=self.s.accept_new_keys,
            connect_deadline=120.0,
        )
        broken = [r for r in reports if r.error]
        if broken:
            raise SSHError("; ".join(f"[{r.host}] {r.error}" for r in broken))

    def _do_deploy(self) -> None:
        assert self.journal is not None
        loaded = self.layout("staged")
        new = next(
            c for c in loaded.inventory.containers if c.hostname == self.new.hostname
        )
        artifact = self.artifact(str(self.journal.data["release"]))
        with self.connect(new, loaded) as connection:
            Deployer(
                connection,
                loaded.inventory,
                new,
                artifact,
                [self.service],
                lambda host, text: self.s.say(f"[{host}] {text}"),
                self.s.health_timeout,
            ).run()
        # The new address answers where the gateway will call it from.
        spec = new.services[self.service]
        url = f"http://{new.address}:{spec.port}/health"
        with self.connect(self.old, self.layout_before()) as connection:
            done = connection.run(
                f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' {quote(url)}",
                check=False,
            )
        if done.stdout.strip() != "200":
            raise MigrationError(
                f"{url} does not answer 200 from {self.old.hostname} "
                f"(got {done.stdout.strip() or 'no answer'})",
                hint="check the firewall and routes between the app containers",
            )

    def _undo_deploy(self) -> None:
        loaded = self.layout("staged")
        new = self.new
        with self.connect(new, loaded) as connection:
            _pm2_delete(connection, self.service)

    def _do_route(self) -> None:
        assert self.journal is not None
        self.journal.set(stage="routed")
        self._point_gateway(self.layout("routed"), self.new)

    def _undo_route(self) -> None:
        assert self.journal is not None
        self.journal.set(stage="staged")
        self._point_gateway(self.layout("staged"), self.old)

    def _point_gateway(self, loaded: LoadedInventory, answering: Container) -> None:
        """Bring the gateways' upstream maps to ``loaded`` and check who answers."""
        gateways = [c for c in loaded.inventory.by_role("app") if GATEWAY in c.services]
        self._configure(loaded, gateways)
        self._check_route(loaded, answering)

    def entry(self) -> tuple[str, int]:
        """Where clients reach the platform: the gateway of the file's layout."""
        holder = self.s.source.inventory.placement()[GATEWAY]
        return str(holder.address), holder.services[GATEWAY].port

    def _check_route(self, loaded: LoadedInventory, answering: Container) -> None:
        """Ask through the public entry until every answer comes from ``answering``."""
        host, port = self.entry()
        instances = sum(
            c.services[GATEWAY].instances
            for c in loaded.inventory.containers
            if GATEWAY in c.services
        )
        tries = 2 * instances + 2
        # The gateway is told by its header; a service by the host it names.
        asked = "auth" if self.service == GATEWAY else self.service
        url = f"http://{host}:{port}/api/v1/{asked}/health"
        script = (
            f"for i in $(seq {tries}); do "
            "curl -s -m 5 -D /tmp/psa-route.h -o /tmp/psa-route.b "
            f"-w '%{{http_code}}' {quote(url)}; printf '\\t'; "
            "tr -d '\\r' < /tmp/psa-route.h "
            "| sed -n 's/^x-psa-gateway: //Ip' | head -1 | tr -d '\\n'; "
            "printf '\\t'; tr -d '\\n\\t' < /tmp/psa-route.b; echo; done; "
            "rm -f /tmp/psa-route.h /tmp/psa-route.b"
        )
        deadline = time.monotonic() + ROUTE_TIMEOUT
        seen: list[str] = []
        with self.connect(self.new, loaded) as connection:
            while True:
                done = connection.run(
                    script, check=False, shown="(ask through the gateway)"
                )
                seen = []
                for line in done.stdout.splitlines():
                    code, _, rest = line.partition("\t")
                    gateway, _, body = rest.partition("\t")
                    try:
                        answer = json.loads(body) if body else {}
                    except json.JSONDecodeError:
                        answer = {}
                    who = (
                        gateway
                        if self.service == GATEWAY
                        else str(answer.get("host", ""))
                    )
                    seen.append(who if code == "200" else f"HTTP {code or 'none'}")
                if seen and all(w == answering.hostname for w in seen):
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
        raise MigrationError(
            f"through the gateway at {host}:{port}, {self.service} is not answered by "
            f"{answering.hostname} alone within {ROUTE_TIMEOUT:.0f} s (answers from: "
            f"{', '.join(sorted(set(seen))) or 'none'})",
        )

    def _do_retire(self) -> None:
        assert self.journal is not None
        self.journal.set(stage="moved")
        if self.service == GATEWAY:
            self.s.say(
                f"{self.old.hostname} keeps a forwarding gateway on "
                f"{self.old.address}; clients may move to {self.new.address} at "
                "their pace"
            )
            return
        loaded = self.layout("moved")
        old = self.old
        with self.connect(old, loaded) as connection:
            _pm2_delete(connection, self.service)
        still = [c for c in loaded.inventory.containers if c.hostname == old.hostname]
        self._configure(loaded, still)

    def _undo_retire(self) -> None:
        assert self.journal is not None
        self.journal.set(stage="routed")
        if self.service == GATEWAY:
            return
        loaded = self.layout("routed")
        old = next(
            c for c in loaded.inventory.containers if c.hostname == self.old.hostname
        )
        self._configure(loaded, [old])
        root = loaded.inventory.app.root
        with self.connect(old, loaded) as connection:
            connection.run(
                f"{PM2} startOrReload {quote(root + '/ecosystem.config.js')} "
                f"--update-env --only {quote(self.service)}",
                step="start the service again",
                timeout=600,
            )
            deadline = time.monotonic() + self.s.health_timeout
            while True:
                health = [
                    h
                    for h in health_of(connection, loaded.inventory, old)
                    if h.service == self.service
                ]
                if health and health[0].ok:
                    break
                if time.monotonic() > deadline:
                    raise MigrationError(
                        f"{self.service} on {old.hostname} did not become healthy again"
                    )
                time.sleep(1)
            connection.run(f"{PM2} save --force >/dev/null", step="pm2 save")

    def _do_verify(self) -> None:
        loaded = self.layout("moved")
        problems: list[str] = []
        for container in loaded.inventory.by_role("app"):
            if not container.services:
                continue
            with self.connect(container, loaded) as connection:
                problems += [
                    f"{h.service} on {h.host}: {h.detail or h.status}"
                    for h in health_of(connection, loaded.inventory, container)
                    if not h.ok
                ]
        host, port = self.entry()
        script = "".join(
            f"printf '%s\\t' {quote(name)}; curl -s -m 5 -o /dev/null "
            f"-w '%{{http_code}}' http://{host}:{port}/api/v1/{name}/health; echo\n"
            for name in loaded.inventory.app.services
        )
        with self.connect(self.new, loaded) as connection:
            done = connection.run(
                "bash -s",
                stdin=script.encode(),
                check=False,
                shown="(every service through the gateway)",
            )
        for line in done.stdout.splitlines():
            name, _, code = line.partition("\t")
            if code.strip() != "200":
                problems.append(
                    f"{name} through the gateway: HTTP {code.strip() or 'none'}"
                )
        if problems:
            raise MigrationError("not every service is healthy: " + "; ".join(problems))


def _pm2_delete(connection: Connection, name: str) -> None:
    """Stop and forget one PM2 app gracefully when it runs; save the list."""
    listed = connection.run(f"{PM2} jlist", check=False, step="pm2 jlist")
    names = set()
    text = listed.stdout
    try:
        names = {p.get("name") for p in json.loads(text[text.index("[") :])}
    except (ValueError, AttributeError):
        if listed.ok:
            raise SSHError(f"[{connection.name}] pm2 jlist answered no list") from None
    if name in names:
        connection.run(
            f"{PM2} delete {quote(name)} >/dev/null", step=f"pm2 delete {name}"
        )
    connection.run(f"{PM2} save --force >/dev/null", step="pm2 save")
