"""Configure containers over SSH by running their role's playbook steps.

Each host is worked in two stages, as pyinfra does: one round trip reads the
state every step cares about (packages, files, directories, guards,
services), then only the steps whose state differs act. A converged host
therefore costs one SSH command. After a step changes something, later steps
read their state again before deciding, since a package install or a
service start changes what they would see.

``dry_run`` takes the same path without acting, and shows a diff for each
file that would change (secret files are never shown).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SSHError
from .inventory import Container
from .playbooks import Playbook, Step, describe
from .render import RenderedFile, Renderer
from .ssh import Connection, quote

log = logging.getLogger(__name__)

OK, CHANGED, SKIPPED, FAILED = "ok", "changed", "skipped", "failed"
# A notified handler is marked here on the host until it has run, so a run
# that stops between a change and its handler still runs it the next time.
PENDING = "/var/lib/psa-infra/pending-handlers"
# Paths read in the batched probe: nothing the shell or sha256sum would
# quote or escape. Others are read one by one.
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]+$")
DIFF_LINES = 60
GUARD_TIMEOUT = 120
APT_ENV = "DEBIAN_FRONTEND=noninteractive"
APT_INSTALL = (
    f"{APT_ENV} apt-get install -y -q --no-install-recommends "
    "-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold"
)


@dataclass
class StepOutcome:
    """What one step did (or would do) on one host."""

    host: str
    playbook: str
    step: str
    status: str
    detail: str = ""
    diff: str | None = None
    seconds: float = 0.0
    kind: str = "step"

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "playbook": self.playbook,
            "step": self.step,
            "status": self.status,
            "detail": self.detail,
            "diff": self.diff,
            "seconds": round(self.seconds, 3),
            "kind": self.kind,
        }


@dataclass
class HostReport:
    """Every step outcome of one host, and its error if it stopped."""

    host: str
    outcomes: list[StepOutcome] = field(default_factory=list)
    error: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def _probe(index: int, step: Step) -> str:
    """A shell snippet printing ``index<TAB>state`` for one step.

    Packages steps are read together, in :meth:`HostRun.state`.
    """
    tag = f"printf '%s\\t%s\\n' {index}"
    if step.directory is not None:
        path = quote(step.directory.path)
        return f"{tag} \"$(stat -c '%F|%a|%U|%G' {path} 2>/dev/null || echo missing)\""
    if step.file is not None:
        path = quote(step.file.dest)
        return (
            f'if [ -f {path} ]; then {tag} "$(sha256sum < {path} | cut -c1-64)|'
            f"$(stat -c '%a|%U|%G' {path})\"; else {tag} missing; fi"
        )
    if step.command is not None:
        checks = []
        if step.command.creates:
            checks.append(f"[ -e {quote(step.command.creates)} ]")
        if step.command.unless:
            checks.append(
                f"timeout {GUARD_TIMEOUT} sh -c {quote(step.command.unless)} "
                ">/dev/null 2>&1 </dev/null"
            )
        if not checks:
            return f"{tag} todo"
        return f"( if {' || '.join(checks)}; then {tag} done; else {tag} todo; fi ) &"
    assert step.service is not None
    name = quote(step.service.name)
    return (
        f'{tag} "$(systemctl is-enabled {name} 2>/dev/null)|'
        f'$(systemctl is-active {name} 2>/dev/null)"'
    )


def _mark(handler: str) -> str:
    """A file name for a handler's pending mark."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in handler)


def _mode(text: str) -> int:
    return int(text, 8)


class HostRun:
    """Apply (or dry-run) one container's playbook steps over one connection."""

    def __init__(
        self,
        connection: Connection,
        container: Container,
        renderer: Renderer,
        playbooks: Mapping[str, Playbook],
        dry_run: bool = False,
        report: Callable[[StepOutcome], None] | None = None,
        pending_dir: str = PENDING,
    ) -> None:
        self.connection = connection
        self.pending_dir = pending_dir
        self.container = container
        self.dry_run = dry_run
        self.report = report or (lambda outcome: None)
        self.steps = renderer.steps(container, playbooks)
        self.handlers = renderer.handlers(container, playbooks)
        self.files: dict[str, RenderedFile] = {
            f.dest: f for f in renderer.files(container, playbooks, reveal=True)
        }
        self.pending: list[str] = []
        # Called once before the first step marked wait_for_data.
        self.gate: Callable[[], None] | None = None

    @property
    def host(self) -> str:
        return self.container.hostname

    def state(self, indexed: list[tuple[int, Step]]) -> dict[int, str]:
        """Read the state of several steps, and pending handlers, in one command.

        Every package of every step is looked up in one dpkg-query call (a
        packages step's state is the list of its packages not installed), and
        the files in one sha256sum and one stat call, which is most of the
        time a converged host takes.
        """
        names = sorted({p for _, s in indexed if s.packages for p in s.packages})
        dests = {s.file.dest for _, s in indexed if s.file is not None}
        files = sorted(d for d in dests if PLAIN_PATH.match(d))
        lines = [
            _probe(i, s)
            for i, s in indexed
            if s.packages is None and not (s.file and s.file.dest in files)
        ]
        if files:
            listed = " ".join(files)
            lines.insert(
                0,
                f"sha256sum -- {listed} 2>/dev/null | sed 's/^/sum\\t/'; "
                f"stat --printf 'stat\\t%n\\t%a|%U|%G\\n' -- {listed} 2>/dev/null; "
                "printf 'stat\\n'",
            )
        if names:
            lines.insert(
                0,
                "dpkg-query -W -f='pkg\\t${Package}\\t${db:Status-Abbrev}\\n' "
                + " ".join(quote(n) for n in names)
                + " 2>/dev/null; printf 'pkg\\n'",
            )
        listing = f"ls {quote(self.pending_dir)} 2>/dev/null | tr '\\n' ' '"
        lines.append(f"printf 'pending\\t%s\\n' \"$({listing})\"")
        lines.append("wait\n")
        result = self.connection.run(
            "bash -s",
            stdin="\n".join(lines).encode(),
            step="read state",
            timeout=600,
            shown="(read the state of the steps)",
        )
        states: dict[int, str] = {}
        installed: set[str] = set()
        packages_read = files_read = False
        sums: dict[str, str] = {}
        stats: dict[str, str] = {}
        for line in result.stdout.splitlines():
            index, _, value = line.partition("\t")
            if index.isdigit():
                states[int(index)] = value
            elif index == "sum":
                digest, _, path = value.partition("  ")
                sums[path] = digest
            elif index == "stat":
                path, _, owned = value.partition("\t")
                files_read = files_read or not path
                stats[path] = owned
            elif index == "pkg":
                name, _, status = value.partition("\t")
                packages_read = packages_read or not name
                if status.startswith("ii"):
                    installed.add(name)
            elif index == "pending":
                marks = set(value.split())
                self.pending = [h for h in self.handlers if _mark(h) in marks]
        for i, step in indexed:
            if step.packages is not None and (packages_read or not names):
                states[i] = " ".join(p for p in step.packages if p not in installed)
            elif step.file is not None and files_read and step.file.dest in files:
                dest = step.file.dest
                both = dest in sums and dest in stats
                states[i] = f"{sums[dest]}|{stats[dest]}" if both else "missing"
        missing = [i for i, _ in indexed if i not in states]
        if missing:
            raise SSHError(
                f"[{self.host}] reading the state of step {missing[0]} printed nothing",
                hint=result.stderr.strip()[-300:] or None,
            )
        return states

    def run(self) -> HostReport:
        """Work through every step, then the notified handlers."""
        report = HostReport(self.host)
        indexed = list(enumerate(step for _, step in self.steps))
        states = self.state(indexed)
        changed_before = False
        notified: list[str] = list(self.pending)
        for index, (playbook, step) in enumerate(self.steps):
            if step.file is not None and step.file.dest not in self.files:
                outcome = StepOutcome(
                    self.host, playbook, step.name, SKIPPED, "not wanted on this host"
                )
                self._emit(report, outcome)
                continue
            started = time.monotonic()
            try:
                if step.wait_for_data and self.gate is not None:
                    gate, self.gate = self.gate, None
                    gate()
                if changed_before and not self.dry_run:
                    states[index] = self.state([(index, step)])[index]
                status, detail, diff = self._step(step, states[index])
            except SSHError as exc:
                outcome = StepOutcome(
                    self.host,
                    playbook,
                    step.name,
                    FAILED,
                    exc.message,
                    seconds=time.monotonic() - started,
                )
                self._emit(report, outcome)
                report.error = exc.message
                return report
            outcome = StepOutcome(
                self.host,
                playbook,
                step.name,
                status,
                detail,
                diff,
                time.monotonic() - started,
                kind=step.kind,
            )
            self._emit(report, outcome)
            if status == CHANGED:
                changed_before = True
                new = [n for n in step.notify if n not in notified]
                if new and not self.dry_run:
                    folder = self.pending_dir
                    marks = " ".join(quote(f"{folder}/{_mark(n)}") for n in new)
                    self.connection.run(
                        f"mkdir -p {quote(folder)} && touch {marks}",
                        step="mark handlers",
                    )
                notified.extend(new)
        for name in [h for h in self.handlers if h in notified]:
            handler = self.handlers[name]
            started = time.monotonic()
            try:
                if self.dry_run:
                    status, detail = CHANGED, f"would run: {describe(handler)}"
                else:
                    self._act(handler)
                    self.connection.run(
                        f"rm -f {quote(f'{self.pending_dir}/{_mark(name)}')}",
                        step="unmark handler",
                    )
                    status, detail = CHANGED, describe(handler)
            except SSHError as exc:
                self._emit(
                    report,
                    StepOutcome(self.host, "handler", name, FAILED, exc.message),
                )
                report.error = exc.message
                return report
            self._emit(
                report,
                StepOutcome(
                    self.host,
                    "handler",
                    name,
                    status,
                    detail,
                    seconds=time.monotonic() - started,
                ),
            )
        return report

    def _emit(self, report: HostReport, outcome: StepOutcome) -> None:
        report.outcomes.append(outcome)
        self.report(outcome)

    def _step(self, step: Step, state: str) -> tuple[str, str, str | None]:
        """Decide from ``state`` and act; return (status, detail, diff)."""
        verb = "would " if self.dry_run else ""
        if step.packages is not None:
            missing = state.split()
            if not missing:
                return OK, "installed", None
            if not self.dry_run:
                self.connection.run(
                    f"{APT_INSTALL} {' '.join(quote(p) for p in missing)}",
                    step=step.name,
                    timeout=1800,
                )
            return CHANGED, f"{verb}install {' '.join(missing)}", None
        if step.directory is not None:
            d = step.directory
            if state == "missing":
                wanted = "create"
            else:
                kind, mode, owner, group = (state.split("|") + ["", "", "", ""])[:4]
                if kind != "directory":
                    raise SSHError(f"[{self.host}] {d.path} exists but is a {kind}")
                if (_mode(mode), owner, group) == (_mode(d.mode), d.owner, d.group):
                    return OK, "present", None
                wanted = (
                    f"set {d.owner}:{d.group} {d.mode} (was {owner}:{group} {mode})"
                )
            if not self.dry_run:
                self.connection.run(
                    f"install -d -m {quote(d.mode)} -o {quote(d.owner)} "
                    f"-g {quote(d.group)} {quote(d.path)}",
                    step=step.name,
                )
            return CHANGED, f"{verb}{wanted} {d.path}", None
        if step.file is not None:
            return self._file(step, state)
        if step.command is not None:
            if state == "done":
                return OK, "guard satisfied", None
            if not self.dry_run:
                self.connection.run(
                    step.command.run, step=step.name, timeout=step.command.timeout
                )
            return CHANGED, f"{verb}run", None
        assert step.service is not None
        return self._service(step, state)

    def _file(self, step: Step, state: str) -> tuple[str, str, str | None]:
        assert step.file is not None
        rendered = self.files[step.file.dest]
        content = rendered.content.encode()
        digest = hashlib.sha256(content).hexdigest()
        verb = "would " if self.dry_run else ""
        if state == "missing":
            change, old_digest = "create", None
        else:
            old_digest, mode, owner, group = (state.split("|") + ["", "", ""])[:4]
            same_meta = (_mode(mode), owner, group) == (
                _mode(rendered.mode),
                rendered.owner,
                rendered.group,
            )
            if old_digest == digest and same_meta:
                return OK, "up to date", None
            change = (
                "update content"
                if old_digest != digest
                else (f"set {rendered.owner}:{rendered.group} {rendered.mode}")
            )
        diff = None
        if self.dry_run and old_digest != digest:
            diff = self._diff(rendered)
        if not self.dry_run:
            if old_digest == digest:
                self.connection.run(
                    f"chown {quote(rendered.owner)}:{quote(rendered.group)} "
                    f"{quote(rendered.dest)} && chmod {quote(rendered.mode)} "
                    f"{quote(rendered.dest)}",
                    step=step.name,
                )
            else:
                self.connection.put(
                    content,
                    rendered.dest,
                    mode=rendered.mode,
                    owner=rendered.owner,
                    group=rendered.group,
                )
        return CHANGED, f"{verb}{change} {rendered.dest}", diff

    def _diff(self, rendered: RenderedFile) -> str:
        if rendered.secret:
            return "(holds secrets: content not shown)"
        old = self.connection.read(rendered.dest)
        old_lines = (old or b"").decode(errors="replace").splitlines(keepends=True)
        lines = list(
            difflib.unified_diff(
                old_lines,
                rendered.content.splitlines(keepends=True),
                fromfile=f"{self.host}:{rendered.dest}",
                tofile=f"rendered {rendered.template}",
            )
        )
        if len(lines) > DIFF_LINES:
            lines = lines[:DIFF_LINES] + [f"... {len(lines) - DIFF_LINES} more lines\n"]
        return "".join(lines)

    def _service(self, step: Step, state: str) -> tuple[str, str, str | None]:
        assert step.service is not None
        service = step.service
        enabled, _, active = state.partition("|")
        commands, words = [], []
        if service.enabled and enabled not in ("enabled", "static", "alias"):
            commands.append(f"systemctl enable {quote(service.name)}")
            words.append("enable")
        if service.state == "started" and active != "active":
            commands.append(f"systemctl start {quote(service.name)}")
            words.append("start")
        elif service.state == "stopped" and active == "active":
            commands.append(f"systemctl stop {quote(service.name)}")
            words.append("stop")
        elif service.state in ("restarted", "reloaded"):
            verb = "restart" if service.state == "restarted" else "reload-or-restart"
            commands.append(f"systemctl {verb} {quote(service.name)}")
            words.append(verb)
        if not commands:
            return OK, f"{enabled or 'not enabled'}, {active or 'inactive'}", None
        if not self.dry_run:
            self.connection.run(" && ".join(commands), step=step.name, timeout=300)
        verb = "would " if self.dry_run else ""
        return CHANGED, f"{verb}{' and '.join(words)} {service.name}", None

    def _act(self, step: Step) -> None:
        """Run a handler unconditionally."""
        if step.command is not None:
            self.connection.run(
                step.command.run, step=step.name, timeout=step.command.timeout
            )
        elif step.service is not None:
            self._service(step, "enabled|active")
        else:
            raise SSHError(
                f"[{self.host}] handler '{step.name}' must be a command or service"
            )
