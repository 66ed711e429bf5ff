"""Rendered configs as the real programs read them: PostgreSQL, Redis, Node, bash, apt.

The project's inventories are rendered with test secrets that need quoting
everywhere, then handed to the program that reads each file on a container.
Only what cannot work on a test machine is overridden (listen addresses,
ports, data and log paths, PostgreSQL's shared memory), and the overridden
values are checked separately where the program can still read them.

A missing program fails its test with the package to install: CI installs
them all (``scripts/setup --system``), so a skip would hide a broken CI.
RabbitMQ and Elasticsearch need Erlang and a JVM that CI does not install,
so their files get a syntax check here instead, not a real daemon.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import http.server
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from render_support import (
    ROOT,
    TEST_SECRETS,
    load,
    load_text,
    render_all,
    with_service_port,
)

from psa_infra.render import write_files

pytestmark = pytest.mark.daemons

PG_BIN = Path("/usr/lib/postgresql/15/bin")
APP = "/opt/psa-platform"
PG = "/etc/postgresql/15/main"

Rendered = Callable[[str, str, str], Path]


def _program(name: str, package: str) -> str:
    """Return the program's path, or fail saying which package provides it."""
    found = shutil.which(name) if "/" not in name else name
    if found is None or not os.access(found, os.X_OK):
        pytest.fail(
            f"{name} is not installed; install the Debian package {package} "
            "(scripts/setup --system installs everything these tests run)"
        )
    return found


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        args, capture_output=True, text=True, timeout=60, **kwargs
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Both inventories rendered with test secrets; returns a path finder."""
    out = tmp_path_factory.mktemp("rendered")
    for name in ("mvp", "production"):
        write_files(list(render_all(load(name)).values()), out / name)

    def path(inventory: str, host: str, dest: str) -> Path:
        found = out / inventory / host / dest.lstrip("/")
        assert found.is_file(), f"{inventory}: {host} has no rendered {dest}"
        return found

    return path


# --- PostgreSQL ---------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL 15 cluster run as a non-root user."""

    def __init__(self, workdir: Path, user: str, prefix: list[str]) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.user = user
        self.prefix = prefix
        self.port = _free_port()
        self.log = workdir / "server.log"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the cluster's user."""
        return _run([*self.prefix, str(PG_BIN / program), *args])

    def setting(self, name: str) -> str:
        """What the server reads for ``name`` from its configuration files."""
        result = self.run("postgres", "-D", str(self.data), "-C", name)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def append(self, text: str) -> None:
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(text)

    def pg_ctl(self, action: str) -> None:
        result = self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-m", "fast", action,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else "(no server log)"
            pytest.fail(f"pg_ctl {action} failed: {result.stderr}\n{log[-3000:]}")

    def psql(
        self, *args: str, password: str | None = None, as_user: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run psql against the cluster (as its OS user when ``as_user``)."""
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        prefix = self.prefix if as_user else []
        return _run(
            [*prefix, str(PG_BIN / "psql"), "-X", "-p", str(self.port), *args], env=env
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """An initialised, stopped cluster in a private directory."""
    for program in ("postgres", "initdb", "pg_ctl", "psql"):
        _program(str(PG_BIN / program), "postgresql-15")
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root.
        user = "postgres" if _user_exists("postgres") else "nobody"
        prefix = [_program("runuser", "util-linux"), "-u", user, "--"]
    else:
        user, prefix = getpass.getuser(), []
    # Not under tmp_path: pytest's root-owned 0700 folders would lock the
    # cluster's user out of its own data directory.
    workdir = Path(tempfile.mkdtemp(prefix="psa-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(workdir, user)
        cluster = Cluster(workdir, user, prefix)
        result = cluster.run(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-instructions",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield cluster
    finally:
        if (workdir / "data" / "postmaster.pid").exists():
            _run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(workdir / "data"),
                  "-m", "immediate", "-w", "stop"])  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _install(cluster: Cluster, source: Path) -> Path:
    """Copy a rendered file where the cluster's user can read it."""
    target = cluster.workdir / source.name
    shutil.copyfile(source, target)
    if os.geteuid() == 0:
        shutil.chown(target, cluster.user)
    return target


@pytest.mark.parametrize(
    ("inventory", "max_connections", "work_mem"),
    [("mvp", "500", str(16 * 1024)), ("production", "700", str(11 * 1024))],
)
def test_postgres_reads_rendered_settings(
    cluster: Cluster, rendered: Rendered, inventory: str, max_connections: str,
    work_mem: str,
) -> None:  # fmt: skip
    """postgres -C parses psa.conf after the stock postgresql.conf, as Debian's
    include_dir does: an unknown name or bad unit would make it exit non-zero."""
    conf = _install(
        cluster, rendered(inventory, "psa-db-master", f"{PG}/conf.d/psa.conf")
    )
    cluster.append(f"\ninclude '{conf}'\n")
    assert {
        name: cluster.setting(name)
        for name in (
            "listen_addresses", "port", "max_connections",
            "superuser_reserved_connections", "shared_buffers", "effective_cache_size",
            "work_mem", "maintenance_work_mem", "password_encryption", "log_statement",
        )
    } == {
        "listen_addresses": "localhost,10.0.30.10",
        "port": "5432",
        "max_connections": max_connections,
        "superuser_reserved_connections": "50",
        # postgres -C answers in base units: 8 kB pages or kB.
        "shared_buffers": str(8 * 1024 * 1024 // 8),
        "effective_cache_size": str(24 * 1024 * 1024 // 8),
        "work_mem": work_mem,
        "maintenance_work_mem": str(1638 * 1024),
        "password_encryption": "scram-sha-256",
        "log_statement": "none",
    }  # fmt: skip


def test_postgres_runs_bootstrap_sql_and_enforces_rendered_hba(
    cluster: Cluster, rendered: Rendered
) -> None:
    """Start the server with the rendered psa.conf, run the rendered bootstrap
    SQL twice through a temporary trust pg_hba, then restart on the rendered
    pg_hba.conf and log in as the app over TCP with its SCRAM password."""
    host = "psa-db-master"
    conf = _install(cluster, rendered("mvp", host, f"{PG}/conf.d/psa.conf"))
    hba = _install(cluster, rendered("mvp", host, f"{PG}/pg_hba.conf"))
    bootstrap = rendered("mvp", host, f"{PG}/psa-bootstrap.sql")
    trust = cluster.workdir / "trust_hba.conf"
    trust.write_text("local all postgres trust\n")
    if os.geteuid() == 0:
        shutil.chown(trust, cluster.user)
    password = TEST_SECRETS["postgres_password"]

    # After the rendered file: loopback and a free port instead of the
    # container's address, and shared memory a test machine has (the real
    # 8GB is checked by test_postgres_reads_rendered_settings). Every
    # statement is logged, to prove the bootstrap SQL keeps its own out.
    cluster.append(
        f"\ninclude '{conf}'\n"
        f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
        f"unix_socket_directories = '{cluster.workdir}'\nshared_buffers = '128MB'\n"
        f"hba_file = '{trust}'\nlog_statement = 'all'\nlogging_collector = off\n"
    )
    cluster.pg_ctl("start")
    socket_dir = str(cluster.workdir)
    for attempt in ("first", "repeated"):
        result = cluster.psql(
            "-h", socket_dir, "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-q", "-f", str(bootstrap),
        )  # fmt: skip
        assert result.returncode == 0, f"{attempt} run: {result.stderr}"
    log = cluster.log.read_text()
    assert "SET log_statement = 'none'" in log
    assert "PASSWORD" not in log and password not in log

    cluster.append(f"hba_file = '{hba}'\n")
    cluster.pg_ctl("restart")
    app = ("-h", "127.0.0.1", "-U", "psa_app")
    result = cluster.psql(
        *app, "-d", "psa_platform", "-tA", "-c",
        "SELECT current_user, current_database(), current_setting('max_connections')",
        password=password,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "psa_app|psa_platform|500"

    wrong = cluster.psql(*app, "-d", "psa_platform", "-c", "SELECT 1", password="no")
    assert 'password authentication failed for user "psa_app"' in wrong.stderr
    other_db = cluster.psql(*app, "-d", "postgres", "-c", "SELECT 1", password=password)
    assert (
        'no pg_hba.conf entry for host "127.0.0.1", user "psa_app"' in other_db.stderr
    )
    superuser = cluster.psql(
        "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"
    )
    assert (
        'no pg_hba.conf entry for host "127.0.0.1", user "postgres"' in superuser.stderr
    )
    if cluster.user == "postgres":
        # local ... postgres peer: only the postgres OS user gets in.
        peer = cluster.psql(
            "-h", socket_dir, "-U", "postgres", "-d", "postgres", "-tA", "-c",
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
            as_user=True,
        )  # fmt: skip
        assert (peer.returncode, peer.stdout.strip()) == (0, "0"), peer.stderr
        if os.geteuid() == 0:
            root = cluster.psql("-h", socket_dir, "-U", "postgres", "-c", "SELECT 1")
            assert 'Peer authentication failed for user "postgres"' in root.stderr


# --- Redis --------------------------------------------------------------------


def test_redis_starts_with_rendered_config(rendered: Rendered, tmp_path: Path) -> None:
    """redis-server reads the rendered redis.conf; bind, port and paths are
    overridden after it to loopback and tmp, then redis-cli reads back the
    password (with its quote, backslash and space), policy and memory limit."""
    server = _program("redis-server", "redis-server")
    cli = _program("redis-cli", "redis-tools")
    conf = rendered("mvp", "psa-redis", "/etc/redis/redis.conf")
    port = _free_port()
    wrapper = tmp_path / "redis-test.conf"
    wrapper.write_text(
        f"include {conf}\n"
        f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\n"
        f"logfile {tmp_path}/redis.log\npidfile {tmp_path}/redis.pid\n"
        # Not started by systemd here, so there is no socket to notify.
        "supervised no\ndaemonize no\n"
    )
    password = TEST_SECRETS["redis_password"]

    def ask(*args: str, auth: str | None = password) -> str:
        login = ["--no-auth-warning", "-a", auth] if auth is not None else []
        result = _run([cli, "-h", "127.0.0.1", "-p", str(port), *login, *args])
        return result.stdout + result.stderr

    process = subprocess.Popen(
        [server, str(wrapper)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while ask("PING").strip() != "PONG":
            if process.poll() is not None or time.monotonic() > deadline:
                log = tmp_path / "redis.log"
                pytest.fail(
                    "redis-server did not come up with the rendered config:\n"
                    + (process.stderr.read().decode() if process.stderr else "")
                    + (log.read_text() if log.exists() else "")
                )
            time.sleep(0.1)

        assert "NOAUTH" in ask("PING", auth=None)
        assert "PONG" not in ask("PING", auth="wrong")
        settings = {
            name: ask("CONFIG", "GET", name).splitlines()[1]
            for name in (
                "requirepass", "maxmemory", "maxmemory-policy", "appendonly",
                "protected-mode", "appendfsync",
            )
        }  # fmt: skip
        assert settings == {
            "requirepass": password,
            "maxmemory": str(3072 * 1024 * 1024),
            "maxmemory-policy": "allkeys-lru",
            "appendonly": "yes",
            "protected-mode": "yes",
            "appendfsync": "everysec",
        }
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stderr:
            process.stderr.close()


# --- Node and PM2's ecosystem file ----------------------------------------------

NODE_SUMMARY = """
const c = require(process.argv[1]);
console.log(JSON.stringify(c.apps.map((a) => {
  const mq = new URL(a.env.RABBITMQ_URL);
  return {
    name: a.name, instances: a.instances, port: a.env.PORT, mode: a.exec_mode,
    script: a.script, cwd: a.cwd, node_env: a.env.NODE_ENV,
    wait_ready: a.wait_ready, kill_timeout: a.kill_timeout, out_file: a.out_file,
    pg: a.env.POSTGRES_PASSWORD, pg_host: a.env.POSTGRES_HOST,
    redis: a.env.REDIS_PASSWORD,
    mq: [decodeURIComponent(mq.username), decodeURIComponent(mq.password),
         mq.host, decodeURIComponent(mq.pathname.slice(1))],
  };
})));
"""

ECOSYSTEMS = [
    (
        "mvp",
        "psa-app",
        [("api-gateway", 2, 3000), ("auth", 2, 3010), ("crm", 2, 3020),
         ("tickets", 4, 3030), ("billing", 2, 3040), ("projects", 2, 3050),
         ("assets", 2, 3060), ("reports", 2, 3070)],
    ),
    ("production", "psa-tickets", [("tickets", 5, 3030)]),
    ("production", "psa-api-gateway", [("api-gateway", 3, 3000)]),
]  # fmt: skip


@pytest.mark.parametrize(("inventory", "host", "apps"), ECOSYSTEMS)
def test_node_loads_ecosystem_with_apps_and_env(
    rendered: Rendered, inventory: str, host: str, apps: list[tuple[str, int, int]]
) -> None:
    """node requires the rendered ecosystem.config.js, which reads the .env
    next to it: apps, instances and ports as placed, passwords intact."""
    node = _program("node", "nodejs")
    ecosystem = rendered(inventory, host, f"{APP}/ecosystem.config.js")
    result = _run([node, "-e", NODE_SUMMARY, str(ecosystem)])
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert [(a["name"], a["instances"], a["port"]) for a in loaded] == apps
    for app in loaded:
        name = app["name"]
        assert app["script"] == f"{APP}/current/services/{name}/dist/index.js"
        assert (app["cwd"], app["mode"], app["node_env"]) == (
            APP,
            "cluster",
            "production",
        )
        assert (app["wait_ready"], app["kill_timeout"]) == (True, 10000)
        assert app["out_file"] == f"{APP}/logs/{name}.out.log"
        assert (app["pg"], app["pg_host"]) == (
            TEST_SECRETS["postgres_password"],
            "10.0.30.10",
        )
        assert app["redis"] == TEST_SECRETS["redis_password"]
        assert app["mq"] == [
            "psa_app",
            TEST_SECRETS["rabbitmq_password"],
            "10.0.20.30:5672",
            "psa",
        ]


def test_node_reads_gateway_upstreams(rendered: Rendered) -> None:
    """The production gateway's upstreams.json is JSON that node parses into
    every service's container address and port."""
    node = _program("node", "nodejs")
    path = rendered("production", "psa-api-gateway", f"{APP}/config/upstreams.json")
    script = "console.log(JSON.stringify(require(process.argv[1]).services))"
    result = _run([node, "-e", script, str(path)])
    assert result.returncode == 0, result.stderr
    inventory = load("production").inventory
    expected = {
        name: {
            "host": "127.0.0.1"
            if host.hostname == "psa-api-gateway"
            else str(host.address),
            "port": host.services[name].port,
        }
        for name, host in inventory.placement().items()
    }
    assert json.loads(result.stdout) == expected


# --- shell scripts ----------------------------------------------------------------

SCRIPTS = [
    ("mvp", "psa-app", "/usr/local/bin/backup-psa-app.sh"),
    ("mvp", "psa-app", "/usr/local/bin/psa-health-check"),
    ("production", "psa-reports", "/usr/local/bin/backup-psa-app.sh"),
    ("production", "psa-reports", "/usr/local/bin/psa-health-check"),
]


@pytest.mark.parametrize(("inventory", "host", "dest"), SCRIPTS)
def test_scripts_parse_in_bash(
    rendered: Rendered, inventory: str, host: str, dest: str
) -> None:
    """bash -n accepts each rendered script."""
    path = rendered(inventory, host, dest)
    assert path.read_text().startswith("#!/bin/bash\n")
    result = _run([_program("bash", "bash"), "-n", str(path)])
    assert result.returncode == 0, result.stderr


def _app_inventory_text(tmp_path: Path) -> str:
    text = (ROOT / "inventory/production.yml").read_text()
    return text.replace("root: /opt/psa-platform", f"root: {tmp_path}/app").replace(
        "backup_dir: /backup/psa-app", f"backup_dir: {tmp_path}/backup"
    )


def test_backup_archives_existing_paths_and_prunes_old_archives(tmp_path: Path) -> None:
    """The backup script, rendered for folders under tmp, archives only what
    exists (the current release through its link) and deletes archives past
    the retention days."""
    files = render_all(load_text(_app_inventory_text(tmp_path), tmp_path))
    script = files["psa-auth", "/usr/local/bin/backup-psa-app.sh"]
    path = tmp_path / "backup-psa-app.sh"
    path.write_text(script.content)
    app, backup = tmp_path / "app", tmp_path / "backup"
    bash = _program("bash", "bash")

    app.mkdir()
    empty = _run([bash, str(path)])
    assert empty.returncode == 1 and "nothing to archive" in empty.stderr

    (app / "services" / "auth").mkdir(parents=True)
    (app / "services" / "auth" / "package.json").write_text("{}")
    (app / ".env").write_text("X=1\n")
    (app / "releases" / "v1").mkdir(parents=True)
    (app / "releases" / "v1" / "index.js").write_text("")
    (app / "current").symlink_to("releases/v1")
    assert backup.is_dir()  # made by the first run, even with nothing to archive
    stale = backup / "psa-app-20000101_000000.tar.gz"
    stale.write_bytes(b"")
    old = time.time() - 10 * 86400
    os.utime(stale, (old, old))
    recent = backup / "psa-app-20000102_000000.tar.gz"
    recent.write_bytes(b"")

    result = _run([bash, str(path)])
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and recent.exists()
    archives = [p for p in backup.glob("psa-app-*.tar.gz") if p != recent]
    assert len(archives) == 1 and archives[0].stat().st_mode & 0o777 == 0o600
    with tarfile.open(archives[0]) as archive:
        names = set(archive.getnames())
    assert {".env", "services/auth/package.json", "releases/v1/index.js"} <= names
    assert not any(n.startswith(("shared", "config", "ecosystem")) for n in names)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test's output quiet: requests are not logged."""


def test_health_check_fails_when_a_service_does_not_answer(tmp_path: Path) -> None:
    """psa-health-check exits 0 while the placed service answers /health with
    2xx, and 1 when it answers 500 or nothing listens."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    text = with_service_port(_app_inventory_text(tmp_path), "auth", int(port))
    files = render_all(load_text(text, tmp_path))
    script = tmp_path / "psa-health-check"
    script.write_text(files["psa-auth", "/usr/local/bin/psa-health-check"].content)
    bash = _program("bash", "bash")
    _program("curl", "curl")
    try:
        up = _run([bash, str(script)])
        assert (up.returncode, up.stdout) == (0, f"ok      auth (port {port})\n")
        _Health.status = 500
        failing = _run([bash, str(script)])
        assert (failing.returncode, failing.stdout) == (
            1,
            f"FAILED  auth (port {port})\n",
        )
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    down = _run([bash, str(script)], env={**os.environ, "PSA_HEALTH_TIMEOUT": "2"})
    assert (down.returncode, down.stdout) == (1, f"FAILED  auth (port {port})\n")


# --- RabbitMQ and Elasticsearch: syntax only --------------------------------------


def _cuttlefish(text: str) -> dict[str, str]:
    """Parse rabbitmq.conf's 'key = value' lines the way its format allows."""
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        assert equals and value, f"line {number}: not 'key = value': {line}"
        assert re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", key), f"line {number}"
        assert "#" not in value, f"line {number}: no comments after a value"
        assert key not in settings, f"line {number}: {key} set twice"
        settings[key] = value
    return settings


def test_rabbitmq_config_parses(rendered: Rendered) -> None:
    """Not run by RabbitMQ (no Erlang here): a sanity parse of rabbitmq.conf's
    key = value format and its values, of enabled_plugins as an Erlang list,
    of rabbitmq-env.conf by sh, and of definitions.json as the broker reads it:
    JSON whose password hash checks out for the app's password, written 0600."""
    host = "psa-rabbitmq"
    conf = _cuttlefish(rendered("mvp", host, "/etc/rabbitmq/rabbitmq.conf").read_text())
    assert conf["listeners.tcp.1"] == "10.0.20.30:5672"
    assert conf["listeners.tcp.2"] == "127.0.0.1:5672"
    assert conf["loopback_users.guest"] == "true"
    assert conf["management.tcp.port"] == "15672"
    assert int(conf["vm_memory_high_watermark.absolute"]) == 1638 * 1024 * 1024
    assert conf["definitions.import_backend"] == "local_filesystem"
    assert conf["definitions.local.path"] == "/etc/rabbitmq/definitions.json"

    plugins = rendered("mvp", host, "/etc/rabbitmq/enabled_plugins").read_text()
    terms = "".join(line.split("%", 1)[0] for line in plugins.splitlines())
    assert re.fullmatch(r"\s*\[\s*rabbitmq_management\s*\]\.\s*", terms)

    env = rendered("mvp", host, "/etc/rabbitmq/rabbitmq-env.conf")
    sourced = _run(["sh", "-c", '. "$1" && printf %s "$NODENAME"', "sh", str(env)])
    assert (sourced.returncode, sourced.stdout) == (0, "rabbit@psa-rabbitmq")

    path = rendered("mvp", host, "/etc/rabbitmq/definitions.json")
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text(encoding="utf-8")
    password = TEST_SECRETS["rabbitmq_password"]
    assert password not in text and json.dumps(password)[1:-1] not in text
    definitions = json.loads(text)
    assert definitions["vhosts"] == [{"name": "psa"}]
    [user] = definitions["users"]
    assert (user["name"], user["tags"]) == ("psa_app", [])
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    # rabbit_password_hashing_sha256: base64 of a 4-byte salt, then
    # sha256(salt + password); the broker recomputes the digest at login.
    stored = base64.b64decode(user["password_hash"], validate=True)
    salt, digest = stored[:4], stored[4:]
    assert hashlib.sha256(salt + password.encode()).digest() == digest
    assert definitions["permissions"] == [
        {
            "user": "psa_app",
            "vhost": "psa",
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        }
    ]


def test_elasticsearch_config_parses(rendered: Rendered) -> None:
    """Not run by Elasticsearch (no JVM, and Elastic's repository is out of
    reach here): elasticsearch.yml is YAML with the node's settings, the heap
    options are equal and below 31 GiB, and the sysctl file is key = value."""
    host = "psa-elasticsearch"
    settings = yaml.safe_load(
        rendered("mvp", host, "/etc/elasticsearch/elasticsearch.yml").read_text()
    )
    assert {k: settings[k] for k in ("cluster.name", "node.name", "network.host")} == {
        "cluster.name": "psa",
        "node.name": "psa-elasticsearch",
        "network.host": "10.0.20.40",
    }
    assert (settings["http.port"], settings["discovery.type"]) == (9200, "single-node")
    heap = [
        line
        for line in rendered(
            "mvp", host, "/etc/elasticsearch/jvm.options.d/heap.options"
        )
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    ]
    assert heap == ["-Xms8192m", "-Xmx8192m"]
    sysctl = rendered("mvp", host, "/etc/sysctl.d/99-elasticsearch.conf").read_text()
    assert "vm.max_map_count = 262144" in sysctl.splitlines()


# --- apt: the package sources ---------------------------------------------------

APT_FILES = [
    ("psa-app", "nodesource", ["https://deb.nodesource.com/node_20.x/"]),
    (
        "psa-rabbitmq",
        "rabbitmq",
        [
            "https://ppa1.rabbitmq.com/rabbitmq/rabbitmq-erlang/deb/debian/",
            "https://ppa1.rabbitmq.com/rabbitmq/rabbitmq-server/deb/debian/",
        ],
    ),
]


@pytest.mark.parametrize(("host", "name", "repositories"), APT_FILES)
def test_apt_reads_the_rendered_sources_and_preferences(
    rendered: Rendered, tmp_path: Path, host: str, name: str, repositories: list[str]
) -> None:
    """apt parses the source list and pins offline; nothing is downloaded, since
    these repositories are out of reach here."""
    apt_get = _program("apt-get", "apt")
    apt_cache = _program("apt-cache", "apt")
    parts, preferences, lists = tmp_path / "parts", tmp_path / "prefs", tmp_path / "l"
    for directory in (parts, preferences, lists / "partial"):
        directory.mkdir(parents=True)
    shutil.copy(rendered("mvp", host, f"/etc/apt/sources.list.d/{name}.list"), parts)
    shutil.copy(
        rendered("mvp", host, f"/etc/apt/preferences.d/{name}.pref"), preferences
    )
    options = [
        f"-oDir::Etc::SourceList={os.devnull}",
        f"-oDir::Etc::SourceParts={parts}",
        f"-oDir::Etc::Preferences={os.devnull}",
        f"-oDir::Etc::PreferencesParts={preferences}",
        f"-oDir::State::Lists={lists}",
        f"-oDir::Cache={tmp_path / 'cache'}",
        f"-oDir::State::status={os.devnull}",
    ]

    uris = _run([apt_get, *options, "--print-uris", "update"])
    assert (uris.returncode, uris.stderr) == (0, ""), uris.stderr
    fetched = {
        line.split("'")[1].rsplit("dists/", 1)[0] for line in uris.stdout.splitlines()
    }
    assert fetched == set(repositories)

    # An unreadable pin is an error here, not a silently ignored preference.
    policy = _run([apt_cache, *options, "policy"])
    assert (policy.returncode, policy.stderr) == (0, ""), policy.stderr


def test_a_missing_program_fails_and_names_its_package() -> None:
    """CI installs every program these tests run, so a missing one is a
    failure that says what to install, never a skip."""
    with pytest.raises(pytest.fail.Exception, match="install the Debian package pkg"):
        _program("psa-no-such-program", "pkg")
