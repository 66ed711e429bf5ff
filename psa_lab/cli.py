"""``psa-infra lab``: a local Proxmox target of real LXC containers.

Nothing heavy is imported here: fakepve, proxmoxer and the lab's engine are
imported inside the commands, so the core CLI starts fast and works without
the ``lab`` extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from psa_infra.errors import PsaInfraError

if TYPE_CHECKING:
    from .state import LabState

lab_app = typer.Typer(
    name="lab",
    help=(
        "A local lab: real Debian 12 LXC containers behind a fake Proxmox API, so "
        "plan, provision and every SSH step run on one machine (Debian 12, root).\n\n"
        'Example: psa-infra lab up && eval "$(psa-infra lab env)" && psa-infra plan'
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the lab keeps its record, secrets and template "
        "(default: .state/lab under the project root).",
        show_default=False,
    ),
]


def _state(ctx: typer.Context, state_dir: Path | None) -> LabState:
    try:
        import fakepve  # noqa: F401
    except ImportError:
        raise PsaInfraError(
            "the lab needs the fake Proxmox API (fakepve), which is not installed",
            hint="pip install 'psa-infra[lab]'",
        ) from None
    from .state import LabState

    if state_dir is None:
        from psa_infra.cli import project_of

        state_dir = project_of(ctx).state / "lab"
    return LabState(state_dir.resolve())


@lab_app.command()
def up(
    ctx: typer.Context,
    inventory: Annotated[
        Path | None,
        typer.Argument(
            help="Inventory whose networks and nodes the lab provides "
            "(default: inventory/mvp.yml).",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Bring the lab up: bridges, NAT, template and the fake Proxmox API.

    Installs lxc, debootstrap and iptables from the Debian registry when
    missing, builds a Debian 12 template once (about a minute; cached under
    the state folder), makes the inventory's bridges with their gateway
    address on this host, NAT for their subnets, and starts the API on
    https://127.0.86.1:8006 with an API token and the lab's own CA. Every
    container created through the API becomes a real LXC container running
    systemd and sshd at its address. Refuses to touch a bridge it did not
    make. Needs root on Debian 12.

    Example: psa-infra lab up inventory/mvp.yml && eval "$(psa-infra lab env)"
    """
    from psa_infra.cli import load, project_of

    from .lab import CANNOT
    from .lab import up as bring_up

    state = _state(ctx, state_dir)
    loaded = load(project_of(ctx), inventory)
    record = bring_up(state, loaded)
    print(f"lab up: https://{record.host}:{record.port}")
    print(f"  nodes:    {', '.join(record.nodes)}")
    bridges = ", ".join(
        f"{name} {info['address']}" for name, info in record.bridges.items()
    )
    print(f"  bridges:  {bridges}")
    print(f"  template: {record.template_volume}")
    print(f"  ssh key:  {state.ssh_key} (known hosts: {state.known_hosts})")
    print('  use it:   eval "$(psa-infra lab env)"')
    for item in CANNOT:
        print(f"psa-infra lab: cannot: {item}", file=sys.stderr)


@lab_app.command()
def status(
    ctx: typer.Context,
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show whether the lab is up, its bridges and its real containers.

    Exits 1 when a lab was started and its API server is gone (a crash):
    recover with psa-infra lab down, then psa-infra lab up.

    Example: psa-infra lab status --json
    """
    from .lab import CANNOT
    from .lab import status as read_status

    state = _state(ctx, state_dir)
    found = read_status(state)
    if as_json:
        print(
            json.dumps(
                {
                    "up": found.up,
                    "url": found.url,
                    "server_pid": found.server_pid,
                    "bridges": found.bridges,
                    "containers": found.containers,
                    "state_dir": str(found.state_dir),
                    "cannot": list(CANNOT),
                },
                indent=2,
            )
        )
    elif not state.exists():
        print("lab: down")
    else:
        print(f"lab: {'up' if found.up else 'BROKEN (API server gone)'} {found.url}")
        print(f"  bridges:    {', '.join(found.bridges) or '-'}")
        for name, state_name in sorted(found.containers.items()):
            print(f"  container:  {name} {state_name}")
        for item in CANNOT:
            print(f"  cannot:     {item}")
    if state.exists() and not found.up:
        raise PsaInfraError(
            "the lab's API server is not running",
            hint="psa-infra lab down, then psa-infra lab up",
        )


@lab_app.command()
def env(ctx: typer.Context, state_dir: StateDir = None) -> None:
    """Print the settings that point psa-infra at the lab, as export lines.

    Sets PROXMOX_URL, PROXMOX_TOKEN_ID, PROXMOX_TOKEN_SECRET and
    PROXMOX_CA_FILE; PSA_INFRA_KNOWN_HOSTS to the host keys the lab made;
    PSA_INFRA_SET to the lab's SSH key and the package sources the lab can
    reach (Debian's Node.js and RabbitMQ, no Elasticsearch package); and the
    inventory's secrets, generated by the lab. Secret values are not printed:
    the lines read them from the lab's 0600 files.

    Example: eval "$(psa-infra lab env)" && psa-infra plan inventory/mvp.yml
    """
    from .lab import env_lines

    for line in env_lines(_state(ctx, state_dir)):
        print(line)


@lab_app.command()
def down(ctx: typer.Context, state_dir: StateDir = None) -> None:
    """Remove everything the lab made: containers, bridges, NAT rules, its server.

    Removes only what the lab recorded making, by name, and restores
    net.ipv4.ip_forward. Safe to run twice; after a crash, run it before the
    next lab up. The template cache is kept.

    Example: psa-infra lab down
    """
    from .lab import down as take_down

    removed = take_down(_state(ctx, state_dir))
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print("lab: nothing to remove")
