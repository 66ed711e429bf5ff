"""The migrate-service command: one service to its own container, journaled.

Registered on the app of :mod:`psa_infra.cli`; the work is in
:mod:`psa_infra.migrate`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli import _client, _public_key, app, load, project_of, stdout_console
from .cli_hosts import AcceptNew, CaFile, Insecure
from .errors import MigrationError, PsaInfraError

if TYPE_CHECKING:
    from .migrate import Setting


@app.command("migrate-service")
def migrate_service(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to move, e.g. auth.")],
    to_inventory: Annotated[
        Path,
        typer.Option(
            "--to-inventory", help="The layout that gives the service its container."
        ),
    ] = Path("inventory/production.yml"),
    from_inventory: Annotated[
        Path,
        typer.Option("--from-inventory", help="The layout the service leaves."),
    ] = Path("inventory/mvp.yml"),
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Carry on an interrupted or failed migration."),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback",
            help="Undo a migration's steps, last first, until the service is back.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show the steps and what each would change."),
    ] = False,
    releases: Annotated[
        Path | None,
        typer.Option(
            "--releases",
            help="Folder holding the current release's artifact "
            "(default: build/releases/ of the project).",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Go ahead without asking.")
    ] = False,
    task_timeout: Annotated[
        float,
        typer.Option("--task-timeout", min=1, help="Seconds to wait per PVE task."),
    ] = 600.0,
    health_timeout: Annotated[
        float,
        typer.Option("--health-timeout", min=5, help="Seconds to wait for /health."),
    ] = 90.0,
    accept_new_host_keys: AcceptNew = False,
    ca_file: CaFile = None,
    insecure: Insecure = False,
) -> None:
    """Move one service from its shared container to its own, with no downtime.

    Steps, each recorded in a journal (.state/migrations/INVENTORY/SERVICE.json)
    once done: preflight (the new container, the node's capacity, the current
    release, the service's health), a snapshot of the old container when its
    storage can take one, create or adopt the new container, set up the app
    role there, deploy the current release with only this service, point the
    gateway at it (upstream map, SIGHUP, checked through the gateway), stop it
    on the old container, and check every service through the gateway. A
    failure after the gateway was pointed at the new container points it back
    before stopping. --resume carries on after an interruption, --rollback
    undoes the steps. Every later command on the inventory sees the service
    where the journal puts it.

    Example: psa-infra migrate-service auth --to-inventory inventory/production.yml
    """
    from .checks import check_coexistence
    from .migrate import Setting, locked
    from .placement import journals_dir
    from .playbooks import load_playbooks
    from .secrets import masked_secrets, resolve_secrets
    from .ssh import KnownHosts

    if resume and rollback:
        raise MigrationError("--resume and --rollback exclude each other")
    project = project_of(ctx)
    source = load(project, from_inventory, moves=False)
    target = load(project, to_inventory, moves=False)
    if source.inventory.name == target.inventory.name:
        raise MigrationError(
            f"{source.path} and {target.path} are the same layout "
            f"({source.inventory.name})",
            hint="--to-inventory names the layout the service moves to",
        )
    check_coexistence(source, target)

    def say(text: str) -> None:
        print(f"[migrate {service}] {text}", file=sys.stderr)

    setting = Setting(
        root=project.root,
        state=project.state,
        source=source,
        target=target,
        # A dry run reads no host, so it needs no secret.
        secrets=masked_secrets(source) if dry_run else resolve_secrets(source),
        playbooks=load_playbooks(project.playbooks, project.shown(project.playbooks)),
        known_hosts=KnownHosts(project.known_hosts),
        public_key=_public_key(source),
        client_factory=lambda: _client(ca_file, insecure),
        releases=releases or project.root / "build" / "releases",
        templates=project.templates,
        task_timeout=task_timeout,
        health_timeout=health_timeout,
        accept_new_keys=accept_new_host_keys,
        say=say,
    )
    # The journal is read under the lock, so a second run sees what the
    # first one wrote, or stops at once while it runs. A dry run changes
    # nothing and takes no lock.
    folder = journals_dir(project.state, source.inventory.name)
    with nullcontext() if dry_run else locked(folder):
        _migrate(setting, service, project.shown, resume, rollback, dry_run, yes)


def _migrate(
    setting: Setting,
    service: str,
    shown_path: Callable[[Path], Path],
    resume: bool,
    rollback: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    from .migrate import Migration

    migration = Migration(setting, service)
    journal = migration.journal
    shown = shown_path(migration.path)
    if journal is None:
        if resume or rollback:
            raise MigrationError(
                f"there is no migration of {service} to "
                f"{'resume' if resume else 'roll back'} ({shown} does not exist)"
            )
        old, new = migration.find_places()
        if old.hostname == new.hostname:
            print(f"{service} already runs on {new.hostname}; nothing to do")
            return
    elif journal.status == "done" and not rollback:
        print(
            f"{service} already lives on {migration.new.hostname} "
            f"({migration.new.vmid}, {migration.new.address}); nothing to do "
            f"(journal: {shown})"
        )
        return
    elif not (resume or rollback or dry_run):
        where = journal.running or (journal.done[-1] if journal.done else "start")
        raise MigrationError(
            f"the migration of {service} is unfinished ({journal.status} at step "
            f"'{where}'"
            + (f": {journal.data['error']}" if journal.data.get("error") else "")
            + ")",
            hint=f"psa-infra migrate-service {service} --resume, or --rollback "
            "to undo it",
        )

    if dry_run:
        _show_steps(migration, rollback)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise PsaInfraError(
                "migrate-service changes the cluster and needs confirmation, but "
                "there is no terminal to ask on",
                hint=f"review psa-infra migrate-service {service} --dry-run, then "
                "re-run with --yes",
            )
        _show_steps(migration, rollback)
        if not typer.confirm("Go ahead?", default=False):
            raise PsaInfraError("nothing was changed: not confirmed")

    if rollback:
        assert journal is not None
        migration.roll_back()
        print(f"{service} is back on {migration.old.hostname}; migration undone")
        return
    if journal is None:
        migration.start()
    migration.run()
    assert migration.journal is not None
    new = migration.new
    print(
        f"{service} now runs on {new.hostname} ({new.vmid}, {new.address}); "
        f"journal: {shown}"
    )
    snapshot = migration.journal.data.get("snapshot")
    if snapshot:
        print(
            f"snapshot {snapshot} of {migration.old.hostname} is kept; remove it "
            f"when satisfied: pct delsnapshot {migration.old.vmid} {snapshot}",
            file=sys.stderr,
        )


def _show_steps(migration: object, rollback: bool) -> None:
    from .migrate import Migration
    from .output import table

    assert isinstance(migration, Migration)
    steps = migration.describe()
    if rollback:
        done = set(migration.journal.done if migration.journal else [])
        steps = [(n, "undo") for n, _ in reversed(steps) if n in done]
    table(
        stdout_console(),
        f"migrate-service {migration.service}" + (" --rollback" if rollback else ""),
        ("step", "what it changes"),
        steps,
    )
