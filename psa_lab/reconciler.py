"""The fake Proxmox API with real containers behind it.

:class:`LabPve` is fakepve's server with one change: every container task
(create, start, shutdown, stop, reboot, migrate, destroy) ends by bringing
the real LXC container to the state the fake container is in, while the
task still holds the container's lock. fakepve changes a container's state
at the end of a task body, after its last wait, so the reconciler can undo
that change before any other request sees it, do the real work, and then
show the new state: the API reports a container running only once the real
one runs, and a destroyed one gone only once the real one is gone.

A clean shutdown (shutdown, reboot, migrate with restart) is real too: the
container's systemd is asked to power off within the task's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fakepve import FakeCt, FakePve, TaskError
from fakepve import shapes as fake_shapes
from fakepve.model import PveError

from .containers import Containers
from .errors import LabError

log = logging.getLogger(__name__)

Body = Callable[[], Awaitable[Any]]


class LabPve(FakePve):  # type: ignore[misc]
    """fakepve whose containers are mirrored into real LXC containers."""

    def __init__(self, containers: Containers, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.real = containers
        # vmid -> the ssh-public-keys of its create request (not part of the config)
        self.create_keys: dict[int, str | None] = {}

    # ------------------------------------------------------- API hooks

    async def _lxc_create(self, user: str, v: dict[str, Any]) -> Any:
        vmid = int(v["vmid"])
        if self.ct(vmid) is None:
            self.create_keys[vmid] = v.get("ssh-public-keys")
        return await super()._lxc_create(user, v)

    async def _lxc_suspend(self, user: str, v: dict[str, Any]) -> Any:
        raise PveError(501, "suspend is not available in the psa-infra lab")

    async def _lxc_resume(self, user: str, v: dict[str, Any]) -> Any:
        raise PveError(501, "resume is not available in the psa-infra lab")

    async def _lxc_config_put(self, user: str, v: dict[str, Any]) -> Any:
        result = await super()._lxc_config_put(user, v)
        ct = self._here(v)
        limits = ("memory", "swap", "cores", "cpulimit")
        if ct is not None and ct.status == "running" and any(k in v for k in limits):
            # A running container takes new limits at once on PVE; so does the lab's.
            try:
                await asyncio.to_thread(self.real.set_limits, ct.vmid, dict(ct.config))
            except LabError as exc:
                message = f"unable to apply limits to CT {ct.vmid}: {exc}"
                raise PveError(500, message) from exc
        return result

    async def task(
        self,
        node: str,
        ttype: str,
        tid: Any,
        user: str,
        body: Body,
        vm: Any = None,
        lock: bool = True,
        log: Any = (),
    ) -> str:
        if not isinstance(vm, FakeCt):
            return str(
                await super().task(
                    node, ttype, tid, user, body, vm=vm, lock=lock, log=log
                )
            )
        ct = vm

        async def mirrored() -> Any:
            shown = ct.status, ct.pid
            note = await body()
            await self._follow(ct, ttype, shown)
            return note

        return str(
            await super().task(
                node, ttype, tid, user, mirrored, vm=vm, lock=lock, log=log
            )
        )

    async def _ct_powerdown(self, ct: FakeCt, timeout: int, force: bool) -> None:
        """Shut the real container down cleanly; kill it after ``timeout`` if forced."""
        stopped = await asyncio.to_thread(
            self.real.shutdown, ct.vmid, int(timeout), force
        )
        if not stopped:
            raise TaskError("container did not stop")
        ct.status = "stopped"
        ct.pid = None

    # ------------------------------------------------------ reconciling

    async def _follow(self, ct: FakeCt, ttype: str, shown: tuple[str, Any]) -> None:
        """Bring the real container to the fake one's state, hiding the change.

        ``shown`` is the status and pid the API showed before the task's body
        ran; it is shown again, before anything can wait, until the real
        container has followed.
        """
        vmid = ct.vmid
        want_running = ct.status == "running"
        if ct in self.cts:
            ct.status, ct.pid = shown
        if ct not in self.cts:
            if self.real.exists(vmid):
                # Keep it listed (locked 'destroyed') until the real one is gone.
                self.cts.append(ct)
                try:
                    await self._real(
                        f"unable to destroy CT {vmid}", self.real.destroy, vmid
                    )
                finally:
                    self.cts.remove(ct)
            self.create_keys.pop(vmid, None)
            return

        exists = self.real.exists(vmid)
        if not exists and ttype == "vzcreate":
            ct.lock = "create"
            try:
                await self._real(
                    f"unable to create CT {vmid}",
                    self.real.create,
                    vmid,
                    dict(ct.config),
                    self.create_keys.pop(vmid, None),
                )
            except TaskError:
                await asyncio.to_thread(_quietly, self.real.destroy, vmid)
                self._drop(ct)
                raise
            finally:
                ct.lock = None
            exists = True
        if not exists:
            ct.status, ct.pid = "stopped", None
            if want_running:
                raise TaskError(
                    f"CT {vmid} has no real container in the lab "
                    f"({ttype} is not mirrored)"
                )
            return

        running = await asyncio.to_thread(self.real.running, vmid)
        if want_running and not running:
            pid = await self._real(
                f"startup for container '{vmid}' failed",
                self.real.start,
                vmid,
                dict(ct.config),
            )
            ct.status, ct.started_at, ct.pid = "running", time.time(), pid
        elif running and not want_running:
            await self._real(f"unable to stop CT {vmid}", self.real.stop, vmid)
            ct.status, ct.pid = "stopped", None
        elif want_running:
            ct.status = "running"
            ct.pid = ct.pid or await asyncio.to_thread(self.real.pid, vmid)
        else:
            ct.status, ct.pid = "stopped", None

    async def _real(self, what: str, action: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking real-container action in a thread; errors fail the task."""
        began = time.monotonic()
        try:
            result = await asyncio.to_thread(action, *args)
            log.info(
                "%s of CT %s took %.1f s",
                action.__name__,
                args[0],
                time.monotonic() - began,
            )
            return result
        except LabError as exc:
            log.warning("%s: %s", what, exc)
            raise TaskError(f"{what} - {exc}") from exc


def _quietly(action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except LabError as exc:
        log.warning("cleanup failed: %s", exc)


def show_bridges(bridges: dict[str, dict[str, str]]) -> None:
    """Make ``GET /nodes/{node}/network`` list the lab's bridges.

    fakepve answers that path with a fixed sample (vmbr0, eno1), which names
    no bridge the lab has; the lab's answer is its own bridges, on every node.
    """

    def networks(ctx: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = str(ctx.get("type") or "")
        if wanted and wanted not in ("bridge", "any_bridge"):
            return []
        items = []
        for index, (name, info) in enumerate(sorted(bridges.items())):
            address, _, prefix = info["address"].partition("/")
            items.append(
                {
                    "iface": name,
                    "type": "bridge",
                    "method": "static",
                    "method6": "manual",
                    "families": ["inet"],
                    "priority": index + 1,
                    "active": 1,
                    "autostart": 1,
                    "exists": 1,
                    "address": address,
                    "cidr": info["address"],
                    "netmask": _netmask(int(prefix)),
                    "bridge_ports": "",
                    "bridge_stp": "off",
                    "bridge_fd": "0",
                    "comments": "psa-infra lab\n",
                }
            )
        return items

    fake_shapes.FIXUPS["/nodes/{node}/network"] = [fake_shapes.replace(networks)]


def _netmask(prefix: int) -> str:
    value = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))
