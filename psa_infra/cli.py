"""The ``psa-infra`` command line: parse, call the engine, print.

Results go to stdout, progress and errors to stderr. Every error the engine
raises is a :class:`~psa_infra.errors.PsaInfraError` and is printed as
``psa-infra: error: ...`` with a hint and its exit code; anything else prints
one line and the path of a file holding the full trace.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.exceptions import Abort, Exit, TyperException

from .errors import ExitCode, InventoryError, PsaInfraError

if TYPE_CHECKING:
    from .inventory import LoadedInventory
    from .plan import Plan
    from .project import Project
    from .proxmox import Client

log = logging.getLogger("psa_infra")

app = typer.Typer(
    name="psa-infra",
    help=(
        "Build and run the PSA platform on Proxmox VE LXC containers.\n\n"
        "Example: psa-infra validate && psa-infra plan --offline inventory/mvp.yml"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Options:
    """Options given before the command."""

    root: Path | None = None
    verbose: int = 0
    debug: bool = False
    overrides: tuple[str, ...] = ()


class Format(StrEnum):
    """Output formats of plans."""

    text = "text"
    json = "json"
    markdown = "markdown"


InventoryArg = Annotated[
    Path | None,
    typer.Argument(
        help="Inventory file (default: inventory/mvp.yml under the project root).",
        show_default=False,
    ),
]


def _options(ctx: typer.Context) -> Options:
    options = ctx.find_root().obj
    return options if isinstance(options, Options) else Options()


def _setup_logging(options: Options) -> None:
    level = (
        logging.DEBUG
        if options.debug
        else (logging.INFO if options.verbose else logging.WARNING)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library loggers (urllib3, paramiko) speak only under --debug.
    root.setLevel(logging.DEBUG if options.debug else logging.WARNING)
    logging.getLogger("psa_infra").setLevel(level)


@app.callback()
def _main(
    ctx: typer.Context,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            envvar="PSA_INFRA_ROOT",
            help="Project root, the folder holding inventory/ (default: found upwards "
            "from the current folder).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Show progress (INFO).")
    ] = 0,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show API calls and commands, and library logs."),
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override an inventory value, e.g. --set packages.nodejs=debian; "
            "repeatable. PSA_INFRA_SET holds more, separated by ';'.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Options(
        root=root, verbose=verbose, debug=debug, overrides=tuple(overrides or ())
    )
    _setup_logging(ctx.obj)


def project_of(ctx: typer.Context) -> Project:
    """The project the command works on."""
    from .project import find_project

    options = _options(ctx)
    return find_project(options.root, overrides=options.overrides)


def load(project: Project, given: Path | None, moves: bool = True) -> LoadedInventory:
    """Load and check one inventory, printing its warnings to stderr.

    With ``moves``, the services migrate-service has moved are placed where
    its journals say (see psa_infra.placement).
    """
    import os

    from .inventory import load_inventory
    from .placement import moves_of, with_moves

    path = project.inventory_path(given)
    overrides = [
        (item, "PSA_INFRA_SET")
        for item in os.environ.get("PSA_INFRA_SET", "").split(";")
        if item.strip()
    ]
    overrides += [(item, "--set") for item in project.overrides]
    loaded = load_inventory(path, project.shown(path), project.root, overrides)
    for warning in loaded.warnings:
        print(f"psa-infra: warning: {warning}", file=sys.stderr)
    found = moves_of(project.state, loaded.inventory.name) if moves else []
    if found:
        loaded = with_moves(loaded, found)
        shown = ", ".join(
            f"{m.service} -> {m.target.hostname}"
            + ("" if m.stage == "moved" else f" ({m.stage})")
            for m in found
        )
        print(f"psa-infra: note: migrated services: {shown}", file=sys.stderr)
    return loaded


def stdout_console(color: bool | None = None):  # type: ignore[no-untyped-def]
    """A console on the current stdout (looked up at call time for tests)."""
    from .output import console

    return console(sys.stdout, color)


@app.command()
def validate(
    ctx: typer.Context,
    inventories: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Inventory files (default: every file in inventory/).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print results as JSON.")
    ] = False,
) -> None:
    """Check inventories before anything touches a server.

    Checks the schema, unknown keys, unique vmids, hostnames and addresses,
    subnets and gateways, ports, service placement, node sizes, secret
    references and the PostgreSQL connection budget. Given several
    inventories, also checks that they can share the cluster during a
    migration. Nothing is sent to Proxmox or any host.

    Example: psa-infra validate inventory/mvp.yml inventory/production.yml
    """
    import json

    from .checks import check_coexistence
    from .plan import budget_facts

    project = project_of(ctx)
    paths = [project.inventory_path(p) for p in inventories or project.inventories()]
    if not paths:
        raise InventoryError(
            f"no inventory files in {project.shown(project.inventory_dir)}"
        )
    loaded, problems, hints = [], [], []
    for path in paths:
        try:
            loaded.append(load(project, path, moves=False))
        except InventoryError as exc:
            problems.extend(exc.problems)
            hints.append(exc.hint)
    for index, first in enumerate(loaded):
        for second in loaded[index + 1 :]:
            try:
                check_coexistence(first, second)
            except InventoryError as exc:
                problems.extend(exc.problems)
    if problems:
        hint = next((h for h in hints if h), None)
        raise InventoryError(problems[0], hint=hint, problems=problems)
    results: list[dict[str, Any]] = [
        {
            "inventory": str(item.path),
            "name": item.inventory.name,
            "containers": len(item.inventory.containers),
            "services": len(item.inventory.app.services),
            "connection_budget": budget_facts(item),
            "warnings": item.warnings,
        }
        for item in loaded
    ]
    if as_json:
        print(json.dumps({"valid": True, "inventories": results}, indent=2))
        return
    for result in results:
        budget = result["connection_budget"]
        print(
            f"{result['inventory']}: valid ({result['containers']} containers, "
            f"{result['services']} services; PostgreSQL connections "
            f"{budget['needed']} of {budget['max_connections']})"
        )


@app.command()
def render(
    ctx: typer.Context,
    inventory: InventoryArg = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder to write into, one sub-folder per host."
        ),
    ] = Path("out"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="Only this container (hostname or vmid); repeatable."
        ),
    ] = None,
    mask_secrets: Annotated[
        bool,
        typer.Option(
            "--mask-secrets",
            help="Write masks instead of secret values (for review; needs no secrets).",
        ),
    ] = False,
) -> None:
    """Render every config file per host into a folder.

    Writes OUT/<hostname>/<path on the host> for each file the playbooks
    install, and OUT/<hostname>/proxmox-create.json with the container's
    Proxmox create parameters. The output is the same byte for byte on every
    run. Secret values are read from their references (environment or file);
    files that hold them are written with mode 0600.

    Example: psa-infra render inventory/production.yml --out build/rendered
    """
    import json

    from .playbooks import load_playbooks
    from .render import RenderedFile, Renderer, write_files
    from .secrets import masked_secrets, resolve_secrets

    project = project_of(ctx)
    loaded = load(project, inventory)
    secrets = masked_secrets(loaded) if mask_secrets else resolve_secrets(loaded)
    renderer = Renderer(project.templates, loaded, secrets, _public_key(loaded))
    playbooks = load_playbooks(project.playbooks, project.shown(project.playbooks))
    containers = (
        [loaded.inventory.find(key) for key in host]
        if host
        else loaded.inventory.containers
    )
    files: list[RenderedFile] = []
    for container in containers:
        params = renderer.create_params(container)
        files.append(
            RenderedFile(
                host=container.hostname,
                dest="/proxmox-create.json",
                content=json.dumps(params, indent=2) + "\n",
                owner="root",
                group="root",
                mode="0644",
                secret=False,
                template="lxc/create.yml.j2",
            )
        )
        files.extend(renderer.files(container, playbooks, reveal=not mask_secrets))
    written = write_files(files, out)
    for item, path in zip(files, written, strict=True):
        print(f"{path}  {'0600 secret' if item.secret else item.mode}")
    print(f"{len(written)} files for {len(containers)} hosts in {out}", file=sys.stderr)


def _public_key(loaded: LoadedInventory) -> str | None:
    """The SSH public key given to new containers, when it can be read."""
    path = Path(loaded.inventory.ssh.public_key).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


@app.command()
def plan(
    ctx: typer.Context,
    inventory: InventoryArg = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Plan without reading the cluster (for CI)."),
    ] = False,
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="Output format.")
    ] = Format.text,
    as_json: Annotated[
        bool, typer.Option("--json", help="Same as --format json.")
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when there is nothing to do, 2 when there are changes, "
            "1 on error.",
        ),
    ] = False,
    containers_only: Annotated[
        bool,
        typer.Option(
            "--containers-only",
            help="Live plan of the containers only, without reading the hosts.",
        ),
    ] = False,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="With --offline: a JSON plan of another revision; show only what "
            "differs from it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show what provisioning would do, in the order it would do it.

    With --offline, nothing is read from Proxmox or the hosts: every
    container is shown as created and every file and setup step as applied,
    which is what a fresh cluster needs. With --baseline, only what differs
    from the plan of another revision is shown, so CI can say what a change
    would do. Secrets are never read: files that hold them are rendered with
    masks and marked secret.

    Example: psa-infra plan --offline inventory/production.yml --format markdown
    """
    from .plan import compare_with_baseline, offline_plan
    from .playbooks import load_playbooks
    from .render import Renderer
    from .secrets import masked_secrets

    if not offline:
        live = live_plan(ctx, inventory, containers_only)
        show_plan(live, Format.json if as_json else output_format)
        if live.incomplete:
            raise PsaInfraError(
                "the plan is incomplete: some hosts could not be read (see the "
                "warnings above)",
                hint="check that the containers run and SSH reaches them, or plan "
                "with --containers-only",
            )
        if detailed_exitcode and live.has_changes:
            raise typer.Exit(ExitCode.CHANGES)
        return
    project = project_of(ctx)
    loaded = load(project, inventory)
    renderer = Renderer(
        project.templates,
        loaded,
        masked_secrets(loaded),
        _public_key(loaded) or f"(read from {loaded.inventory.ssh.public_key})",
    )
    playbooks = load_playbooks(project.playbooks, project.shown(project.playbooks))
    result = offline_plan(loaded, renderer, playbooks, str(loaded.path))
    if baseline is not None:
        result = compare_with_baseline(result, _read_json(baseline), str(baseline))
    show_plan(result, Format.json if as_json else output_format)
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(ExitCode.CHANGES)


def _read_json(path: Path) -> dict[str, object]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PsaInfraError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PsaInfraError(
            f"{path} line {exc.lineno}: not JSON: {exc.msg}",
            hint="make it with: psa-infra plan --offline --json INVENTORY > FILE",
        ) from None
    if not isinstance(data, dict):
        raise PsaInfraError(f"{path}: not a psa-infra plan")
    return data


def _client(ca_file: Path | None = None, insecure: bool = False) -> Client:
    """A Proxmox API client from the environment and the TLS flags."""
    from .proxmox import Client
    from .pvesettings import settings_from_env

    settings = settings_from_env(
        ca_file=str(ca_file) if ca_file else None, insecure=insecure
    )
    if insecure:
        print(
            f"psa-infra: warning: TLS verification is off (--insecure): anyone between "
            f"here and {settings.url} can read the credentials and change the answers",
            file=sys.stderr,
        )
    return Client(settings)


def live_plan(
    ctx: typer.Context, inventory: Path | None, containers_only: bool = False
) -> Plan:
    """Plan against the cluster and, unless told not to, inside the hosts."""
    from .provision import live_plan as make_plan
    from .provision import read_plan
    from .render import Renderer
    from .secrets import masked_secrets, resolve_secrets

    project = project_of(ctx)
    loaded = load(project, inventory)
    # Comparing files that hold secrets needs their values: read them first.
    secrets = None if containers_only else resolve_secrets(loaded)
    renderer = Renderer(
        project.templates, loaded, masked_secrets(loaded), _public_key(loaded)
    )
    client = _client()
    try:
        _, _, result, problems, _ = read_plan(client, loaded, renderer)
    finally:
        client.close()
    for problem in problems:
        print(f"psa-infra: warning: {problem}", file=sys.stderr)
    plan = make_plan(loaded, str(loaded.path), result, problems)
    if secrets is None:
        plan.notes.append("containers only: the hosts' files and steps were not read")
    else:
        _plan_hosts(project, loaded, secrets, plan)
    return plan


def _plan_hosts(
    project: Project, loaded: LoadedInventory, secrets: Any, plan: Plan
) -> None:
    """Add what a dry run of each existing host's steps would change."""
    from .hosts import configure_hosts
    from .plan import host_actions
    from .playbooks import load_playbooks
    from .render import Renderer
    from .ssh import KnownHosts

    pending = {a.host for a in plan.actions if a.kind in ("create", "replace")}
    existing = [c for c in loaded.inventory.containers if c.hostname not in pending]
    playbooks = load_playbooks(project.playbooks, project.shown(project.playbooks))
    renderer = Renderer(project.templates, loaded, secrets, _public_key(loaded))
    reports = configure_hosts(
        loaded,
        renderer,
        playbooks,
        KnownHosts(project.known_hosts),
        containers=existing,
        dry_run=True,
        connect_deadline=10.0,
    )
    by_host = {c.hostname: c for c in loaded.inventory.containers}
    for report in reports:
        if report.error:
            plan.warnings.append(f"{report.host}: not read: {report.error}")
            plan.incomplete = True
        plan.actions.extend(host_actions(by_host[report.host], report.outcomes))
    if pending:
        plan.notes.append(
            "setup steps of containers still to be created are not listed here; "
            "plan --offline shows them all"
        )


def show_plan(result: object, output_format: Format) -> None:
    """Print a plan to stdout in the chosen format."""
    from .output import plan_json, plan_markdown, plan_text
    from .plan import Plan

    assert isinstance(result, Plan)
    if output_format is Format.json:
        plan_json(result, sys.stdout)
    elif output_format is Format.markdown:
        plan_markdown(result, sys.stdout)
    else:
        plan_text(result, stdout_console())


def _report(error: PsaInfraError) -> None:
    problems = getattr(error, "problems", None) or [error.message]
    for problem in problems:
        print(f"psa-infra: error: {problem}", file=sys.stderr)
    if len(problems) > 1:
        print(f"psa-infra: {len(problems)} problems found", file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)


def _crash(exc: BaseException) -> int:
    fd, name = tempfile.mkstemp(prefix="psa-infra-crash-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)))
    frame = traceback.extract_tb(exc.__traceback__)[-1:] or None
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    print(
        f"psa-infra: internal error: {type(exc).__name__}{where}; "
        f"the full trace is in {name}",
        file=sys.stderr,
    )
    print(
        "hint: this is a bug in psa-infra; please report it with that file",
        file=sys.stderr,
    )
    return ExitCode.ERROR


# Commands that change the cluster and the hosts register themselves on `app`.
from . import cli_app, cli_hosts, cli_migrate  # noqa: E402,F401

# The local lab is a separate package (psa_lab); without it the core CLI still works.
try:
    from psa_lab.cli import lab_app
except ImportError:  # pragma: no cover - psa_lab not shipped
    pass
else:
    app.add_typer(lab_app, name="lab")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="psa-infra", standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except TyperException as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"psa-infra: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        print("psa-infra: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except PsaInfraError as exc:
        _report(exc)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that catches all
        return _crash(exc)
    return result if isinstance(result, int) else ExitCode.OK


def main() -> NoReturn:
    """Entry point of the ``psa-infra`` command."""
    sys.exit(run())
