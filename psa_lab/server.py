"""The lab's API server: fakepve with real containers, as a background process.

``lab up`` starts it detached, as ``python -m psa_lab.server --state DIR``;
it reads what to serve from ``DIR/lab.json`` and its secrets from ``DIR``,
writes ``DIR/server.pid`` once it listens, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
from pathlib import Path

from .containers import Containers
from .reconciler import LabPve, show_bridges
from .state import TOKEN_ID, LabState, Record

log = logging.getLogger("psa_lab.server")


def build(state: LabState, record: Record) -> LabPve:
    """A LabPve set up as the record says: nodes, storages, template, token."""
    pve = LabPve(
        Containers(state),
        # Only the API token logs in: the password is random and never shown.
        password=secrets.token_urlsafe(24),
        host=record.host,
        port=record.port,
    )
    # Real time: task waits, lock waits and timeouts last as long as on PVE.
    pve.time_scale = 1.0
    pve.nodes = {node: {"online": True} for node in record.nodes}
    for storage, content in record.storages.items():
        if storage not in pve.storages:
            pve.storages[storage] = {
                "type": "dir",
                "active": 1,
                "content": content,
                "files": set(),
                "path": f"/var/lib/vz/{storage}",
                "avail": 500 * 1024**3,
            }
    storage, _, volume = record.template_volume.partition(":")
    pve.store_file(
        storage,
        volume.removeprefix("vztmpl/"),
        state.template.stat().st_size,
        content="vztmpl",
    )
    pve.apitokens[TOKEN_ID] = state.token()
    show_bridges(record.bridges)
    return pve


async def serve(state: LabState) -> None:
    record = state.load()
    pve = build(state, record)
    await pve.start(str(state.pki / "server.crt"), str(state.pki / "server.key"))
    state.pidfile.write_text(f"{os.getpid()}\n", encoding="utf-8")
    log.info("listening on %s", pve.url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")
    await pve.stop()
    state.pidfile.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m psa_lab.server")
    parser.add_argument(
        "--state", required=True, type=Path, help="the lab state folder"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log would write every request; warnings are enough.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(LabState(args.state.resolve())))


if __name__ == "__main__":
    main()
