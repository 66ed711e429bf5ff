"""Commands that change the cluster and the hosts: provision and verify.

Registered on the app of :mod:`psa_infra.cli`; like it, they parse, call the
engine and print.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli import (
    InventoryArg,
    _client,
    _public_key,
    app,
    load,
    project_of,
    stdout_console,
)
from .errors import PsaInfraError, SSHError

if TYPE_CHECKING:
    from .configure import HostReport, StepOutcome
    from .inventory import LoadedInventory
    from .provision import Outcome
    from .proxmox import Client
    from .pveplan import Diff

log = logging.getLogger("psa_infra")

CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar="PROXMOX_CA_FILE",
        help="CA certificate (PEM) that signed the Proxmox API's certificate.",
        show_default=False,
    ),
]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the API's TLS certificate.")
]
AcceptNew = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Record the SSH host key of any container not seen before (keys of "
        "containers psa-infra creates are always recorded; a changed key is "
        "always refused).",
    ),
]


@app.command()
def provision(
    ctx: typer.Context,
    inventory: InventoryArg = None,
    containers_only: Annotated[
        bool,
        typer.Option(
            "--containers-only",
            help="Create, update and move the containers, and stop there.",
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="Only this container (hostname or vmid); repeatable."
        ),
    ] = None,
    replace: Annotated[
        list[str] | None,
        typer.Option(
            "--replace",
            help="Allow destroying and creating this container again when it cannot "
            "change in place (its data is lost); repeatable.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Apply without asking for confirmation.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Change nothing: show the container plan and, on existing hosts, "
            "every step that would change, with a diff for files.",
        ),
    ] = False,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            min=1,
            max=32,
            help="Containers worked on at once: heavy PVE tasks (default 4) and "
            "hosts set up over SSH (default 8).",
            show_default=False,
        ),
    ] = None,
    task_timeout: Annotated[
        float,
        typer.Option("--task-timeout", min=1, help="Seconds to wait per PVE task."),
    ] = 600.0,
    accept_new_host_keys: AcceptNew = False,
    ca_file: CaFile = None,
    insecure: Insecure = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print results as JSON.")
    ] = False,
) -> None:
    """Create the inventory's containers and set them up over SSH.

    First the containers, through the Proxmox API: reads the cluster, checks
    it (nodes online, storage, template, bridges, vmids) and stops before any
    change if something is wrong; creates missing containers and starts them,
    changes in place what PVE can change (memory, cores, swap, onboot, tags,
    description, DNS, network, a larger disk) and moves containers whose node
    changed. A change PVE cannot make in place (template, storage, a smaller
    disk) needs --replace NAME. Then each container's role playbook over SSH:
    the data services in parallel, then the app once they answer. Every step
    reads its state first and acts only on a difference, so a second run
    changes nothing. Connection: PROXMOX_URL, and PROXMOX_TOKEN_ID with
    PROXMOX_TOKEN_SECRET (or PROXMOX_USER and PROXMOX_PASSWORD); SSH as the
    inventory's ssh settings say, host keys in .state/known_hosts
    (PSA_INFRA_KNOWN_HOSTS).

    Example: psa-infra provision --yes inventory/mvp.yml
    """
    from .hosts import HOST_PARALLEL
    from .output import plan_text
    from .playbooks import load_playbooks
    from .provision import DEFAULT_PARALLEL, check_ready, read_plan
    from .provision import live_plan as make_plan
    from .render import Renderer
    from .secrets import masked_secrets, resolve_secrets

    project = project_of(ctx)
    loaded = load(project, inventory)
    # Everything that can be wrong locally is found before the first request.
    secrets = None if containers_only else resolve_secrets(loaded)
    playbooks = (
        None
        if containers_only
        else load_playbooks(project.playbooks, project.shown(project.playbooks))
    )
    public_key = _public_key(loaded)
    if public_key is None:
        print(
            f"psa-infra: warning: SSH public key {loaded.inventory.ssh.public_key} "
            "cannot be read; new containers get no authorized key",
            file=sys.stderr,
        )
    renderer = Renderer(project.templates, loaded, masked_secrets(loaded), public_key)
    api_parallel = parallel or DEFAULT_PARALLEL
    client = _client(ca_file, insecure)
    try:
        _, _, result, problems, downloads = read_plan(
            client, loaded, renderer, only or (), replace or (), api_parallel
        )
        check_ready(problems)
        live = make_plan(loaded, str(loaded.path), result, [])
        outcomes: list[Outcome] = []
        if dry_run:
            if live.has_changes:
                plan_text(live, stdout_console())
        elif live.has_changes:
            if not yes:
                if not sys.stdin.isatty():
                    raise PsaInfraError(
                        "provision changes the cluster and needs confirmation, but "
                        "there is no terminal to ask on",
                        hint="review 'psa-infra plan', then re-run with --yes",
                    )
                plan_text(live, stdout_console())
                if not typer.confirm("Apply these changes?", default=False):
                    raise PsaInfraError("nothing was changed: not confirmed")
            outcomes = _apply(
                client, loaded, result, downloads, api_parallel, task_timeout
            )
    finally:
        client.close()
    # With --json and the hosts to follow, one JSON document comes at the end.
    _report_containers(
        result, outcomes, as_json, dry_run, printed=containers_only or not as_json
    )
    if containers_only:
        return
    assert secrets is not None and playbooks is not None
    made = {o.host for o in outcomes if {"create", "replace"} & set(o.actions)}
    pending = {a.host for a in result.actions if a.kind in ("create", "replace")}
    chosen = [
        c
        for c in loaded.inventory.containers
        if (not only or c.hostname in _names(loaded, only))
        and not (dry_run and c.hostname in pending)
    ]
    if dry_run and pending:
        print(
            "psa-infra: note: not yet created, so their setup steps are not "
            f"checked: {', '.join(sorted(pending))}",
            file=sys.stderr,
        )
    reports = _configure(
        project,
        loaded,
        secrets,
        playbooks,
        chosen,
        made,
        dry_run,
        accept_new_host_keys,
        parallel or HOST_PARALLEL,
    )
    _report_hosts(reports, as_json, outcomes)


def _names(loaded: LoadedInventory, keys: list[str]) -> set[str]:
    return {loaded.inventory.find(key).hostname for key in keys}


def _configure(
    project: Any,
    loaded: LoadedInventory,
    secrets: Any,
    playbooks: Any,
    chosen: list[Any],
    made: set[str],
    dry_run: bool,
    accept_new: bool,
    parallel: int,
) -> list[HostReport]:
    """Run the playbooks on ``chosen`` containers, showing each change."""
    from .configure import CHANGED, FAILED
    from .hosts import configure_hosts
    from .render import Renderer
    from .ssh import KnownHosts

    known_hosts = KnownHosts(project.known_hosts)
    for container in loaded.inventory.containers:
        # A container psa-infra has just (re)created has a new host key.
        if container.hostname in made:
            known_hosts.forget(str(container.address))
    renderer = Renderer(project.templates, loaded, secrets, _public_key(loaded))

    def show(outcome: StepOutcome) -> None:
        if outcome.status in (CHANGED, FAILED):
            print(
                f"[{outcome.host}] {outcome.status}: {outcome.playbook}: "
                f"{outcome.step}: {outcome.detail}",
                file=sys.stderr,
            )
            if outcome.diff:
                print(outcome.diff.rstrip("\n"), file=sys.stderr)
        else:
            log.info(
                "[%s] %s: %s: %s",
                outcome.host,
                outcome.status,
                outcome.playbook,
                outcome.step,
            )

    return configure_hosts(
        loaded,
        renderer,
        playbooks,
        known_hosts,
        containers=chosen,
        dry_run=dry_run,
        trust_new=frozenset(made),
        accept_new_keys=accept_new,
        limit=parallel if parallel > 1 else 1,
        connect_deadline=120.0 if made else 20.0,
        report=show,
    )


def _report_containers(
    result: Diff,
    outcomes: list[Outcome],
    as_json: bool,
    dry_run: bool,
    printed: bool = True,
) -> None:
    from .output import table

    unmanaged = [a for a in result.actions if a.kind == "unmanaged"]
    failed = [o for o in outcomes if o.result == "failed"]
    if not printed:
        pass
    elif as_json:
        print(
            json.dumps(
                {
                    "changes": bool(outcomes),
                    "results": [o.as_json() for o in outcomes],
                    "unmanaged": [a.as_json() for a in unmanaged],
                },
                indent=2,
            )
        )
    elif outcomes:
        table(
            stdout_console(),
            "Containers",
            ("vmid", "host", "node", "result", "seconds"),
            [(o.vmid, o.host, o.node, o.result, f"{o.seconds:.1f}") for o in outcomes],
        )
    elif not dry_run:
        print("No changes: the containers match the inventory.")
    for action in unmanaged:
        print(f"psa-infra: note: {action.host}: {action.summary}", file=sys.stderr)
    for outcome in outcomes:
        for warning in outcome.warnings:
            print(f"psa-infra: warning: [{outcome.host}] {warning}", file=sys.stderr)
    if failed:
        from .errors import ProxmoxError

        raise ProxmoxError(
            f"{len(failed)} of {len(outcomes)} containers failed: "
            + "; ".join(f"{o.host}: {o.error}" for o in failed),
            hint="fix the cause and run provision again; finished containers are kept",
        )


def _report_hosts(
    reports: list[HostReport], as_json: bool, outcomes: list[Outcome]
) -> None:
    from .configure import CHANGED, FAILED, OK
    from .output import table

    if as_json:
        print(
            json.dumps(
                {
                    "containers": [o.as_json() for o in outcomes],
                    "hosts": [
                        {
                            "host": r.host,
                            "ok": r.count(OK),
                            "changed": r.count(CHANGED),
                            "failed": r.count(FAILED),
                            "error": r.error,
                            "steps": [o.as_json() for o in r.outcomes],
                        }
                        for r in reports
                    ],
                },
                indent=2,
            )
        )
    else:
        table(
            stdout_console(),
            "Setup",
            ("host", "ok", "changed", "failed", "seconds"),
            [
                (
                    r.host,
                    r.count(OK),
                    r.count(CHANGED),
                    r.count(FAILED) or ("-" if r.error and not r.outcomes else 0),
                    f"{sum(o.seconds for o in r.outcomes):.1f}",
                )
                for r in reports
            ],
        )
    broken = [r for r in reports if r.error]
    if broken:
        raise SSHError(
            f"{len(broken)} of {len(reports)} hosts failed:\n"
            + "\n".join(f"  {r.error}" for r in broken),
            hint="fix the cause and run provision again: finished steps are kept "
            "and not repeated",
        )


@app.command()
def verify(
    ctx: typer.Context,
    inventory: InventoryArg = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Only this container (hostname or vmid)."),
    ] = None,
    accept_new_host_keys: AcceptNew = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print results as JSON.")
    ] = False,
) -> None:
    """Check over SSH that every host is set up as the inventory says.

    Runs testinfra checks on each container: packages installed, files with
    the rendered content, owner and mode, directories, services enabled and
    running, ports listening on the container's address, and the values the
    daemons run with (max_connections, Redis' password and policy, RabbitMQ's
    users and vhost, the PM2 ecosystem and log rotation). Exits 6 when any
    check fails; a check that cannot run here (Elasticsearch without a
    package source) is shown as unavailable with the reason.

    Example: psa-infra verify inventory/mvp.yml
    """
    from .hosts import target_of
    from .output import table
    from .playbooks import load_playbooks
    from .render import Renderer
    from .secrets import resolve_secrets
    from .ssh import Connection, KnownHosts, parallel
    from .verify import FAIL, UNAVAILABLE, Check, HostChecks

    project = project_of(ctx)
    loaded = load(project, inventory)
    secrets = resolve_secrets(loaded)
    playbooks = load_playbooks(project.playbooks, project.shown(project.playbooks))
    renderer = Renderer(project.templates, loaded, secrets, _public_key(loaded))
    known_hosts = KnownHosts(project.known_hosts)
    containers = (
        [loaded.inventory.find(k) for k in only]
        if only
        else loaded.inventory.containers
    )

    def work(container: Any) -> list[Check]:
        connection = Connection(
            target_of(loaded.inventory, container),
            known_hosts,
            trust_new=accept_new_host_keys,
            connect_deadline=20.0,
        )
        try:
            return HostChecks(
                connection, container, loaded.inventory, renderer, playbooks, secrets
            ).run()
        finally:
            connection.close()

    checks: list[Check] = []
    for container, result, error in parallel(containers, work, 8):
        if error is None:
            checks.extend(result)
        elif isinstance(error, PsaInfraError):
            checks.append(Check(container.hostname, "reachable", FAIL, error.message))
        else:
            raise error
    if as_json:
        print(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        table(
            stdout_console(),
            "Verify",
            ("host", "check", "result", "detail"),
            [(c.host, c.name, c.status, c.detail) for c in checks],
        )
    failed = [c for c in checks if c.status == FAIL]
    unavailable = [c for c in checks if c.status == UNAVAILABLE]
    print(
        f"{len(checks) - len(failed) - len(unavailable)} passed, {len(failed)} failed, "
        f"{len(unavailable)} unavailable",
        file=sys.stderr,
    )
    if failed:
        raise SSHError(
            f"{len(failed)} checks failed: "
            + "; ".join(f"[{c.host}] {c.name}: {c.detail}" for c in failed[:5])
            + (" ..." if len(failed) > 5 else ""),
            hint="run psa-infra provision to repair, then verify again",
        )


def _apply(
    client: Client,
    loaded: LoadedInventory,
    result: Diff,
    downloads: list[str],
    parallel: int,
    task_timeout: float,
) -> list[Outcome]:
    """Apply a diff with a progress display on a terminal's stderr."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .provision import Applier

    err = Console(stderr=True)
    if not err.is_terminal:
        applier = Applier(
            client,
            loaded,
            task_timeout,
            lambda host, text: log.info("[%s] %s", host, text),
        )
        applier.download_templates(downloads)
        return applier.run(result, parallel)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[host]:<20}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        rows = {
            host: progress.add_task("waiting", host=host)
            for host in dict.fromkeys(
                a.host for a in result.actions if a.kind != "unmanaged"
            )
        }

        def step(host: str, text: str) -> None:
            if host in rows:
                progress.update(rows[host], description=text)

        applier = Applier(client, loaded, task_timeout, step)
        applier.download_templates(downloads)
        return applier.run(result, parallel)
