"""Commands for the app as a deployable: package, deploy, rollback, health, backup.

Registered on the app of :mod:`psa_infra.cli`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli import InventoryArg, _public_key, app, load, project_of, stdout_console
from .errors import PsaInfraError, SSHError

if TYPE_CHECKING:
    from .inventory import Container, LoadedInventory
    from .project import Project
    from .ssh import Connection

OnlyService = Annotated[
    list[str] | None,
    typer.Option("--only", help="Only this service (repeatable)."),
]


def _app_hosts(loaded: LoadedInventory, only: list[str] | None) -> list[Container]:
    inventory = loaded.inventory
    for name in only or ():
        if name not in inventory.app.services:
            raise PsaInfraError(
                f"no service '{name}' in inventory {inventory.name} "
                f"({', '.join(inventory.app.services)})"
            )
    return [
        c
        for c in inventory.by_role("app")
        if c.services and (not only or set(only) & set(c.services))
    ]


def _connect(
    project: Project, loaded: LoadedInventory, container: Container
) -> Connection:
    from .hosts import target_of
    from .ssh import Connection, KnownHosts

    return Connection(
        target_of(loaded.inventory, container),
        KnownHosts(project.known_hosts),
        connect_deadline=20.0,
    )


@app.command()
def package(
    ctx: typer.Context,
    app_dir: Annotated[
        Path | None,
        typer.Argument(
            help="The app folder, holding package.json (default: app/ of the project).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for the artifact (default: build/releases/ of the project).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Release version (default: package.json's)."),
    ] = None,
) -> None:
    """Build the app once into a versioned artifact.

    Copies the app folder, runs npm ci, npm run build and npm prune --omit=dev
    in the copy, and writes psa-app-VERSION.tar.gz with a manifest (version,
    services and ports, Node engine, SHA-256 of the archive and of every
    file). Needs Node.js and npm on this machine and the npm registry; the
    containers need neither to install it. A version is packaged once.

    Example: psa-infra package app --out build/releases --version 1.4.0
    """
    from .release import package as build

    root = project_of(ctx).root
    artifact = build(app_dir or root / "app", out or root / "build/releases", version)
    print(f"{artifact.archive}  {artifact.sha256}")
    print(
        f"release {artifact.version}: {len(artifact.services)} services, "
        f"{len(artifact.manifest['files'])} files",
        file=sys.stderr,
    )


@app.command()
def deploy(
    ctx: typer.Context,
    artifact_path: Annotated[
        Path, typer.Argument(help="psa-app-VERSION.tar.gz (its manifest beside it).")
    ],
    inventory: InventoryArg = None,
    only: OnlyService = None,
    health_timeout: Annotated[
        float,
        typer.Option("--health-timeout", min=5, help="Seconds to wait for /health."),
    ] = 90.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print results as JSON.")
    ] = False,
) -> None:
    """Deploy a release to every app container, one at a time, with no downtime.

    Brings the app containers' configs up to date (.env, ecosystem, upstream
    map), uploads and checks the release, unpacks it to
    releases/VERSION, switches the current link atomically, reloads each PM2
    app gracefully and waits until every service answers /health on the new
    version. A release that does not become healthy is rolled back on that
    container and the deploy stops there. The last 5 releases are kept.

    Example: psa-infra deploy build/releases/psa-app-1.4.0.tar.gz inventory/mvp.yml
    """
    from .deploy import Deployer, DeployError
    from .hosts import configure_hosts
    from .output import table
    from .playbooks import load_playbooks
    from .release import load_artifact
    from .render import Renderer
    from .secrets import resolve_secrets
    from .ssh import KnownHosts

    project = project_of(ctx)
    loaded = load(project, inventory)
    artifact = load_artifact(artifact_path)
    secrets = resolve_secrets(loaded)
    playbooks = load_playbooks(project.playbooks, project.shown(project.playbooks))
    hosts = _app_hosts(loaded, only)
    renderer = Renderer(project.templates, loaded, secrets, _public_key(loaded))
    reports = configure_hosts(
        loaded, renderer, playbooks, KnownHosts(project.known_hosts), containers=hosts
    )
    broken = [r for r in reports if r.error]
    if broken:
        raise SSHError(
            "the app containers' configs could not be brought up to date: "
            + "; ".join(str(r.error) for r in broken),
            hint="run psa-infra provision, then deploy again",
        )

    def say(host: str, text: str) -> None:
        print(f"[{host}] {text}", file=sys.stderr)

    done = []
    for container in hosts:
        with _connect(project, loaded, container) as connection:
            try:
                done.append(
                    Deployer(
                        connection,
                        loaded.inventory,
                        container,
                        artifact,
                        only or (),
                        say,
                        health_timeout,
                    ).run()
                )
            except DeployError as exc:
                untouched = [c.hostname for c in hosts[len(done) + 1 :]]
                if untouched:
                    exc.message += f"; not deployed to: {', '.join(untouched)}"
                raise
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "host": d.host,
                        "version": d.version,
                        "previous": d.previous,
                        "uploaded": d.uploaded,
                        "result": d.result,
                        "seconds": round(d.seconds, 2),
                        "health": [h.as_json() for h in d.health],
                    }
                    for d in done
                ],
                indent=2,
            )
        )
        return
    table(
        stdout_console(),
        f"Deployed release {artifact.version}",
        ("host", "previous", "result", "services healthy", "seconds"),
        [
            (d.host, d.previous or "-", d.result, len(d.health), f"{d.seconds:.1f}")
            for d in done
        ],
    )


@app.command()
def rollback(ctx: typer.Context, inventory: InventoryArg = None) -> None:
    """Go back one release on every app container, by hand.

    Switches current to the release deployed before it, reloads PM2
    gracefully and waits for /health, container by container.

    Example: psa-infra rollback inventory/mvp.yml
    """
    from .deploy import Deployer

    project = project_of(ctx)
    loaded = load(project, inventory)
    for container in _app_hosts(loaded, None):
        with _connect(project, loaded, container) as connection:
            deployer = Deployer(connection, loaded.inventory, container, None)
            old, new = deployer.roll_back_by_hand()
            print(f"{container.hostname}: {old} -> {new}")


@app.command()
def health(
    ctx: typer.Context,
    inventory: InventoryArg = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print results as JSON.")
    ] = False,
) -> None:
    """Show every service's health on every container that runs it.

    Asks each service's /health on its container and prints a table of
    status, release version and what is wrong. Exits 6 when one is down.

    Example: psa-infra health inventory/mvp.yml --json
    """
    from .deploy import ServiceHealth, health_of
    from .output import table
    from .ssh import parallel

    project = project_of(ctx)
    loaded = load(project, inventory)

    def ask(container: Any) -> list[ServiceHealth]:
        with _connect(project, loaded, container) as connection:
            return health_of(connection, loaded.inventory, container)

    found: list[ServiceHealth] = []
    for container, result, error in parallel(_app_hosts(loaded, None), ask, 8):
        if error is None:
            found.extend(result)
        elif isinstance(error, PsaInfraError):
            found.extend(
                ServiceHealth(
                    container.hostname, n, s.port, "unreachable", "", error.message
                )
                for n, s in container.services.items()
            )
        else:
            raise error
    if as_json:
        print(json.dumps([h.as_json() for h in found], indent=2))
    else:
        table(
            stdout_console(),
            "Health",
            ("host", "service", "port", "status", "version", "detail"),
            [(h.host, h.service, h.port, h.status, h.version, h.detail) for h in found],
        )
    down = [h for h in found if not h.ok]
    if down:
        raise SSHError(
            f"{len(down)} of {len(found)} services are not healthy: "
            + ", ".join(f"{h.service} on {h.host}" for h in down),
            hint="see the detail column; PM2's logs are under the app root's logs/",
        )


@app.command()
def backup(ctx: typer.Context, inventory: InventoryArg = None) -> None:
    """Back up the app's code, config and .env on every app container now.

    Runs the same script the nightly schedule runs (kept for the inventory's
    app.backup_retention_days) and prints each archive's path.

    Example: psa-infra backup inventory/mvp.yml
    """
    project = project_of(ctx)
    loaded = load(project, inventory)
    for container in _app_hosts(loaded, None):
        with _connect(project, loaded, container) as connection:
            result = connection.run(
                "/usr/local/bin/backup-psa-app.sh", step="backup", timeout=1800
            )
            print(f"{container.hostname}: {result.stdout.strip() or 'done'}")
