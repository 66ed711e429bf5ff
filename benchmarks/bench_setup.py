"""Wall times of host setup: psa-infra beside pyinfra, Ansible and apt alone.

A script, not a test: it prints one table of first run, re-run and dry run
per tool, measured in one go on the lab's five MVP containers. Needs root on
Debian 12 and the lab's template; it brings the lab up when it is down (and
then takes it down at the end), and otherwise leaves it up with the MVP
provisioned.

    .venv/bin/python benchmarks/bench_setup.py [--runs N]
        [--skip-pyinfra] [--skip-ansible]

Every first run starts from the same clean state: the five containers are
destroyed through the lab's API and created again (``provision
--containers-only``), fresh from the template, before each one.

1. apt alone, the physical floor: over plain ssh, in all five at once,
   ``apt-get update && apt-get install -y redis-server postgresql-15``.
2. pyinfra 3.x and 3. ansible-core 2.19, from PyPI into a venv of their own
   in this run's temporary folder: the same reference deployment on all five
   (package lists, redis-server and postgresql-15, two directories, two
   PostgreSQL config files with a restart handler, both services enabled and
   running); first run, re-run, dry run (``--dry``, ``--check``).
4. psa-infra: ``provision --yes inventory/mvp.yml`` with no containers,
   split into container creation through the API and host setup over SSH;
   then the re-run and ``provision --dry-run`` on the converged hosts.

psa-infra's first run is not the same work as the others': it creates the
containers and runs the whole MVP roles (PostgreSQL, Redis, RabbitMQ, the
Elasticsearch config, Node.js and PM2), with --no-install-recommends. Its
re-run and dry run are like for like: each reads every step's state once and
changes nothing. Re-runs and dry runs are medians of --runs runs.

It talks only to the lab's containers, loopback and the package registries,
and stops everything it starts (including Ansible's ssh master processes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventory" / "mvp.yml"
PSA_INFRA = Path(sys.executable).parent / "psa-infra"
PACKAGES = ("redis-server", "postgresql-15")
TOOLS = ("pyinfra>=3,<4", "ansible-core>=2.19,<2.20")
# Reference figures measured earlier on a machine of the same kind (2 cores):
# first run, re-run, dry run.
REFERENCE = {
    "apt alone": (72.0, None, None),
    "pyinfra 3.10": (70.6, 2.4, 1.3),
    "Ansible 2.19": (103.7, 20.0, 19.1),
}
AIM_FIRST_OVER_APT, AIM_RERUN, AIM_DRY = 2.0, 1.2, 0.8

# The reference deployment, written for each tool.
PG_CONF = "/etc/postgresql/15/main/conf.d"
FILES = {
    "bench-tuning.conf": "max_connections = 200\nshared_buffers = 128MB\n",
    "bench-logging.conf": "log_min_duration_statement = 500\nlog_line_prefix = '%m '\n",
}
PYINFRA_DEPLOY = f"""\
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

apt.update(name="apt-get update", cache_time=3600)
apt.packages(name="packages", packages={list(PACKAGES)!r})
files.directory(name="/etc/bench", path="/etc/bench", mode="755")
files.directory(
    name="/var/lib/bench", path="/var/lib/bench",
    user="postgres", group="postgres", mode="750",
)
uploads = [
    files.put(
        name=name, src="files/" + name, dest="{PG_CONF}/" + name,
        user="postgres", group="postgres", mode="644",
    )
    for name in {sorted(FILES)!r}
]
systemd.service(name="redis-server", service="redis-server", running=True,
                enabled=True)
systemd.service(name="postgresql", service="postgresql", running=True,
                enabled=True)
systemd.service(name="restart postgresql", service="postgresql",
                restarted=True, _if=any_changed(*uploads))
"""
ANSIBLE_PLAYBOOK = f"""\
- hosts: all
  tasks:
    - name: apt-get update
      ansible.builtin.apt: {{update_cache: true, cache_valid_time: 3600}}
    - name: packages
      ansible.builtin.apt: {{name: {list(PACKAGES)}, state: present}}
    - name: /etc/bench
      ansible.builtin.file: {{path: /etc/bench, state: directory, mode: "0755"}}
    - name: /var/lib/bench
      ansible.builtin.file:
        path: /var/lib/bench
        state: directory
        owner: postgres
        group: postgres
        mode: "0750"
    - name: PostgreSQL config files
      ansible.builtin.copy:
        src: "files/{{{{ item }}}}"
        dest: "{PG_CONF}/{{{{ item }}}}"
        owner: postgres
        group: postgres
        mode: "0644"
      loop: {sorted(FILES)}
      notify: restart postgresql
    - name: redis-server
      ansible.builtin.systemd_service:
        name: redis-server
        state: started
        enabled: true
    - name: postgresql
      ansible.builtin.systemd_service:
        name: postgresql
        state: started
        enabled: true
  handlers:
    - name: restart postgresql
      ansible.builtin.systemd_service: {{name: postgresql, state: restarted}}
"""


@dataclass
class Row:
    """One tool's figures, in seconds."""

    tool: str
    first: float | None = None
    reruns: list[float] = field(default_factory=list)
    dries: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rerun(self) -> float | None:
        return statistics.median(self.reruns) if self.reruns else None

    @property
    def dry(self) -> float | None:
        return statistics.median(self.dries) if self.dries else None


@dataclass
class Lab:
    """The lab's settings for psa-infra and for plain SSH clients."""

    env: dict[str, str]
    key: Path
    known_hosts: Path
    hosts: dict[str, str]  # hostname -> address
    vmids: list[int]

    def ssh_args(self) -> list[str]:
        return [
            "-F", "/dev/null", "-i", str(self.key), "-l", "root",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=3",
        ]  # fmt: skip


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def timed(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[float, str]:
    """Run ``argv`` to its end; return its wall time and stdout (stderr to log)."""
    began = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
    took = time.perf_counter() - began
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        sys.exit(
            f"bench: {shlex.join(argv[:4])} ... failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{tail}"
        )
    return took, done.stdout


def psa_infra(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(PSA_INFRA), "--root", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench: psa-infra {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


# ------------------------------------------------------------------ the lab


def lab_is_up() -> bool:
    return bool(json.loads(psa_infra("lab", "status", "--json"))["up"])


def read_lab() -> Lab:
    """Turn ``lab env``'s export lines into an environment, reading secret files."""
    env = dict(os.environ)
    for line in psa_infra("lab", "env").splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        secret = re.fullmatch(r'"\$\(cat (.+)\)"', value)
        if secret:
            path = shlex.split(secret.group(1))[0]
            env[name] = Path(path).read_text().strip()
        else:
            env[name] = shlex.split(value)[0]
    settings = dict(
        item.split("=", 1) for item in env["PSA_INFRA_SET"].split(";") if item
    )
    inventory = yaml.safe_load(INVENTORY.read_text())
    return Lab(
        env=env,
        key=Path(settings["ssh.private_key"]),
        known_hosts=Path(env["PSA_INFRA_KNOWN_HOSTS"]),
        hosts={c["hostname"]: str(c["address"]) for c in inventory["containers"]},
        vmids=[int(c["vmid"]) for c in inventory["containers"]],
    )


def api(lab: Lab) -> Any:
    from proxmoxer import ProxmoxAPI

    host, port = lab.env["PROXMOX_URL"].removeprefix("https://").split(":")
    user, token = lab.env["PROXMOX_TOKEN_ID"].split("!")
    return ProxmoxAPI(
        host,
        port=int(port),
        user=user,
        token_name=token,
        token_value=lab.env["PROXMOX_TOKEN_SECRET"],
        verify_ssl=lab.env["PROXMOX_CA_FILE"],
    )


def wait_task(client: Any, node: str, upid: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.nodes(node).tasks(upid).status.get()
        if status["status"] == "stopped":
            if status.get("exitstatus") != "OK":
                sys.exit(f"bench: task {upid} failed: {status.get('exitstatus')}")
            return
        time.sleep(0.1)
    sys.exit(f"bench: task {upid} did not end within 120 s")


def destroy_containers(lab: Lab) -> None:
    """Destroy the inventory's containers that exist, through the lab's API."""
    client = api(lab)
    found = [
        (node["node"], int(ct["vmid"]))
        for node in client.nodes.get()
        for ct in client.nodes(node["node"]).lxc.get()
        if int(ct["vmid"]) in lab.vmids
    ]

    def destroy(where: tuple[str, int]) -> None:
        node, vmid = where
        upid = client.nodes(node).lxc(vmid).delete(force=1, purge=1)
        wait_task(client, node, upid)

    with ThreadPoolExecutor(len(found) or 1) as pool:
        list(pool.map(destroy, found))


def ssh_ready(lab: Lab) -> None:
    """Wait until every container answers over SSH with its recorded host key."""

    def one(address: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                ["ssh", *lab.ssh_args(), address, "true"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                sys.exit(f"bench: {address} not reachable over SSH: {done.stderr!r}")
            time.sleep(0.2)

    with ThreadPoolExecutor(len(lab.hosts)) as pool:
        list(pool.map(one, lab.hosts.values()))


def fresh_containers(lab: Lab, tmp: Path) -> None:
    """Make the five containers anew from the template and wait for sshd."""
    began = time.perf_counter()
    destroy_containers(lab)
    timed(
        [str(PSA_INFRA), "--root", str(ROOT), "provision", "--containers-only",
         "--yes", str(INVENTORY)],
        tmp / "containers.log",
        lab.env,
    )  # fmt: skip
    ssh_ready(lab)
    say(f"fresh containers in {time.perf_counter() - began:.1f} s")


# ---------------------------------------------------------------- the tools


def apt_floor(lab: Lab, tmp: Path) -> Row:
    """apt-get update and install of the two packages in all five at once."""
    command = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
        f"apt-get install -y -q {' '.join(PACKAGES)}"
    )
    began = time.perf_counter()
    procs = []
    for name, address in lab.hosts.items():
        log = (tmp / f"apt-{name}.log").open("w")
        procs.append(
            (
                name,
                log,
                subprocess.Popen(
                    ["ssh", *lab.ssh_args(), address, command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
            )
        )
    failed = []
    for name, log, proc in procs:
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    took = time.perf_counter() - began
    if failed:
        sys.exit(f"bench: apt alone failed on {', '.join(failed)}; see logs")
    return Row("apt alone", first=took)


def install_tools(tmp: Path) -> Path:
    """A venv of its own with pyinfra and ansible-core; return its bin folder."""
    venv = tmp / "tools"
    say(f"installing {' and '.join(TOOLS)} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *TOOLS],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return venv / "bin"


def version(bin_dir: Path, dist: str) -> str:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    return subprocess.run(
        [str(bin_dir / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def write_project(lab: Lab, tmp: Path) -> Path:
    """The reference deployment for pyinfra and Ansible, with the lab's hosts."""
    project = tmp / "reference"
    (project / "files").mkdir(parents=True)
    for name, text in FILES.items():
        (project / "files" / name).write_text(text)
    (project / "deploy.py").write_text(PYINFRA_DEPLOY)
    (project / "playbook.yml").write_text(ANSIBLE_PLAYBOOK)
    data = {
        "ssh_user": "root",
        "ssh_key": str(lab.key),
        "ssh_known_hosts_file": str(lab.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }
    hosts = [
        (name, dict(data, ssh_hostname=address)) for name, address in lab.hosts.items()
    ]
    (project / "inventory.py").write_text(f"hosts = {hosts!r}\n")
    lines = ["[all]"] + [
        f"{name} ansible_host={address}" for name, address in lab.hosts.items()
    ]
    (project / "hosts.ini").write_text("\n".join(lines) + "\n")
    (project / "control").mkdir()
    ssh_args = (
        f"-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={lab.known_hosts}"
        " -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s"
    )
    (project / "ansible.cfg").write_text(
        "[defaults]\n"
        "forks = 5\n"
        "host_key_checking = True\n"
        "remote_user = root\n"
        f"private_key_file = {lab.key}\n"
        "interpreter_python = /usr/bin/python3\n"
        "[ssh_connection]\n"
        f"ssh_args = {ssh_args}\n"
        f"control_path_dir = {project / 'control'}\n"
    )
    return project


def tool_env(project: Path) -> dict[str, str]:
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(project / "ansible.cfg"),
        ANSIBLE_HOME=str(project / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        PYINFRA_PROGRESS="off",
        NO_COLOR="1",
    )


def changed_in_recap(output: str) -> int:
    return sum(int(n) for n in re.findall(r"\bchanged=(\d+)", output))


def run_pyinfra(bin_dir: Path, project: Path, runs: int) -> Row:
    row = Row(f"pyinfra {version(bin_dir, 'pyinfra')}")
    base = [str(bin_dir / "pyinfra"), "inventory.py", "deploy.py"]
    env = tool_env(project)
    row.first, _ = timed([*base, "-y"], project / "pyinfra-first.log", env, project)
    for n in range(runs):
        took, _ = timed([*base, "-y"], project / f"pyinfra-re{n}.log", env, project)
        row.reruns.append(took)
    for n in range(runs):
        took, _ = timed([*base, "--dry"], project / f"pyinfra-dry{n}.log", env, project)
        row.dries.append(took)
    return row


def run_ansible(bin_dir: Path, project: Path, runs: int) -> Row:
    row = Row(f"Ansible {version(bin_dir, 'ansible-core')}")
    base = [str(bin_dir / "ansible-playbook"), "-i", "hosts.ini", "playbook.yml"]
    env = tool_env(project)
    try:
        row.first, _ = timed(base, project / "ansible-first.log", env, project)
        changed = []
        for n in range(runs):
            took, out = timed(base, project / f"ansible-re{n}.log", env, project)
            row.reruns.append(took)
            changed.append(changed_in_recap(out))
        for n in range(runs):
            took, _ = timed(
                [*base, "--check"], project / f"ansible-check{n}.log", env, project
            )
            row.dries.append(took)
        if any(changed):
            row.notes.append(f"Ansible re-runs reported changed={changed}")
    finally:
        stop_ssh_masters(project / "control")
    return row


def stop_ssh_masters(control: Path) -> None:
    """Stop the ssh master processes Ansible left behind (ControlPersist)."""
    for socket in control.glob("*"):
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "bench"],
            capture_output=True,
            check=False,
        )


# ---------------------------------------------------------------- psa-infra


def provision_json(stdout: str) -> dict[str, Any]:
    """The last JSON document provision printed (one, when hosts are set up)."""
    start = stdout.find("{")
    return json.loads(stdout[start:]) if start >= 0 else {}


def changed_steps(document: dict[str, Any]) -> list[str]:
    return [
        f"{step['host']}: {step['playbook']}: {step['step']}"
        for host in document.get("hosts", [])
        for step in host["steps"]
        if step["status"] == "changed"
    ]


def run_psa_infra(lab: Lab, tmp: Path, runs: int) -> tuple[Row, dict[str, float]]:
    """First run on no containers (split), re-runs and dry runs; medians."""
    destroy_containers(lab)
    row = Row("psa-infra")
    command = [str(PSA_INFRA), "--root", str(ROOT)]
    target = [str(INVENTORY), "--json"]

    # The first run with -v: the last "[host] created" line on stderr marks the
    # end of container creation; host setup is the rest of the command.
    created_at: list[float] = []
    log = tmp / "psa-first.log"
    began = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "-v", "provision", "--yes", *target],
        cwd=ROOT,
        env=lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    chunks: list[str] = []
    reader = threading.Thread(
        target=lambda: chunks.append(proc.stdout.read() if proc.stdout else "")
    )
    reader.start()
    with log.open("w") as err:
        for line in proc.stderr or ():
            err.write(line)
            if re.match(r"INFO psa_infra: \[[^\]]+\] (created|replaced)", line):
                created_at.append(time.perf_counter() - began)
    reader.join()
    code = proc.wait()
    whole = time.perf_counter() - began
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        sys.exit(f"bench: psa-infra provision failed ({code}):\n{tail}")
    document = provision_json("".join(chunks))
    containers = [c["seconds"] for c in document.get("containers", [])]
    creation = max(created_at) if created_at else max(containers, default=0.0)
    row.first = whole
    split = {"creation": creation, "setup": whole - creation, "whole": whole}
    steps = [s for h in document.get("hosts", []) for s in h["steps"]]
    slow = sorted(steps, key=lambda s: -s["seconds"])[:5]
    row.notes += [
        f"first run: {len(containers)} containers created, "
        f"{sum(1 for s in steps if s['status'] == 'changed')} steps changed "
        f"of {len(steps)}",
        "slowest steps: "
        + "; ".join(f"{s['host']} {s['step']} {s['seconds']:.1f} s" for s in slow),
        # The app host starts only once the data hosts answer: these add up.
        "seconds in steps per host: "
        + ", ".join(
            f"{h['host']} {sum(s['seconds'] for s in h['steps']):.1f}"
            for h in document.get("hosts", [])
        ),
    ]

    again: list[str] = []
    for n in range(runs):
        took, out = timed(
            [*command, "provision", "--yes", *target], tmp / f"psa-re{n}.log", lab.env
        )
        row.reruns.append(took)
        again += changed_steps(provision_json(out))
    drift: list[str] = []
    for n in range(runs):
        took, out = timed(
            [*command, "provision", "--dry-run", *target],
            tmp / f"psa-dry{n}.log",
            lab.env,
        )
        row.dries.append(took)
        drift += changed_steps(provision_json(out))
    row.notes.append("re-runs changed: " + ("; ".join(sorted(set(again))) or "nothing"))
    row.notes.append(
        "dry runs would change: " + ("; ".join(sorted(set(drift))) or "nothing")
    )
    return row, split


# ------------------------------------------------------------------- report


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def report(rows: list[Row], split: dict[str, float], runs: int) -> None:
    floor = next(r for r in rows if r.tool == "apt alone").first
    psa = next(r for r in rows if r.tool == "psa-infra")
    # psa-infra's setup part is what the others do on existing containers.
    psa_setup = split["setup"]
    head = ("tool", "first run", "re-run", "dry run", "first/apt",
            "first/psa", "re-run/psa", "dry/psa")  # fmt: skip
    lines = [head]
    for row in rows:
        first = split["setup"] if row is psa else row.first
        lines.append(
            (
                row.tool + (" (setup)" if row is psa else ""),
                cell(first),
                cell(row.rerun),
                cell(row.dry),
                ratio(first, floor),
                ratio(first, psa_setup),
                ratio(row.rerun, psa.rerun),
                ratio(row.dry, psa.dry),
            )
        )
    lines.append(("psa-infra (whole)", cell(split["whole"]), "", "",
                  ratio(split["whole"], floor), "", "", ""))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print(f"\nHost setup on the lab's five MVP containers (re-run, dry run: "
          f"median of {runs})")  # fmt: skip
    for n, line in enumerate(lines):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"\npsa-infra first run: {split['whole']:.1f} s whole = "
        f"{split['creation']:.1f} s creating the containers through the API "
        f"+ {split['setup']:.1f} s setting the hosts up over SSH."
    )
    print(
        "Note: psa-infra's first run does more than the others: it creates the "
        "containers and runs the whole MVP roles (PostgreSQL, Redis, RabbitMQ, "
        "Node.js, PM2, ...), one role per container, not two packages on all "
        "five. Its re-run and dry run are like for like."
    )
    for row in rows:
        for note in row.notes:
            print(f"  {row.tool}: {note}")
    print("\nReference figures measured earlier (same kind of machine):")
    for tool, (first, rerun, dry) in REFERENCE.items():
        print(f"  {tool:<14} first {cell(first)}, re-run {cell(rerun)}, "
              f"dry {cell(dry)}")  # fmt: skip

    def verdict(ok: bool) -> str:
        return "meets the aim" if ok else "MISSES the aim"

    assert floor is not None and psa.rerun is not None and psa.dry is not None
    print("\nAims for psa-infra:")
    print(
        f"  host setup within {AIM_FIRST_OVER_APT:.0f} s of apt alone: "
        f"{psa_setup:.1f} s vs {floor:.1f} s "
        f"({verdict(psa_setup <= floor + AIM_FIRST_OVER_APT)}; the whole command "
        f"{verdict(split['whole'] <= floor + AIM_FIRST_OVER_APT)})"
    )
    print(f"  re-run under {AIM_RERUN} s: {psa.rerun:.2f} s "
          f"({verdict(psa.rerun < AIM_RERUN)})")  # fmt: skip
    print(f"  dry run under {AIM_DRY} s: {psa.dry:.2f} s "
          f"({verdict(psa.dry < AIM_DRY)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs root and the lab (psa-infra[lab]); see docs/benchmarks.md.",
    )
    parser.add_argument("--skip-pyinfra", action="store_true", help="no pyinfra")
    parser.add_argument("--skip-ansible", action="store_true", help="no Ansible")
    parser.add_argument(
        "--runs", type=int, default=3, help="re-runs and dry runs per tool (median)"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-setup-") as name:
        tmp = Path(name)
        bin_dir = None
        if not (args.skip_pyinfra and args.skip_ansible):
            bin_dir = install_tools(tmp)

        brought_up = not lab_is_up()
        if brought_up:
            say("bringing the lab up")
            psa_infra("lab", "up", str(INVENTORY))
        try:
            lab = read_lab()
            rows = []
            fresh_containers(lab, tmp)
            say("apt alone in all five at once")
            rows.append(apt_floor(lab, tmp))
            say(f"apt alone: {rows[-1].first:.1f} s")
            if bin_dir is not None:
                project = write_project(lab, tmp)
                if not args.skip_pyinfra:
                    fresh_containers(lab, tmp)
                    say("pyinfra")
                    rows.append(run_pyinfra(bin_dir, project, args.runs))
                    say(f"pyinfra first run: {rows[-1].first:.1f} s")
                if not args.skip_ansible:
                    fresh_containers(lab, tmp)
                    say("Ansible")
                    rows.append(run_ansible(bin_dir, project, args.runs))
                    say(f"Ansible first run: {rows[-1].first:.1f} s")
            say("psa-infra, from no containers")
            row, split = run_psa_infra(lab, tmp, args.runs)
            rows.append(row)
            report(rows, split, args.runs)
        finally:
            if brought_up:
                say("taking the lab down")
                psa_infra("lab", "down")


if __name__ == "__main__":
    main()
