"""Rendering the role playbooks' files: expected outputs, modes, secrets, errors.

Expected files live under ``tests/cases/render/<inventory>/<masked|secrets>/
<hostname>/<path on the host>``. After a deliberate template change, run
``PSA_REGENERATE_RENDER=1 pytest tests/test_render.py`` once: it rewrites the
expected files that differ and fails, so the new output is read in ``git diff``
before it is committed, never accepted silently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import jinja2
import pytest
from render_support import (
    ROOT,
    TEST_SECRETS,
    load,
    load_text,
    playbooks,
    render_all,
    renderer,
)

from psa_infra.errors import PlaybookError, TemplateError
from psa_infra.inventory import LoadedInventory
from psa_infra.playbooks import Step, describe, load_playbooks
from psa_infra.render import Renderer, write_files
from psa_infra.secrets import MASK, Secret

CASES_DIR = Path(__file__).parent / "cases" / "render"
REGENERATE = os.environ.get("PSA_REGENERATE_RENDER") == "1"
APP = "/opt/psa-platform"
PG = "/etc/postgresql/15/main"

# (inventory, secrets, hostname, file): the outputs whose every byte is reviewed.
CASES = [
    ("mvp", "masked", "psa-db-master", f"{PG}/conf.d/psa.conf"),
    ("mvp", "masked", "psa-db-master", f"{PG}/pg_hba.conf"),
    ("mvp", "masked", "psa-redis", "/etc/redis/redis.conf"),
    ("mvp", "masked", "psa-rabbitmq", "/etc/rabbitmq/rabbitmq.conf"),
    ("mvp", "masked", "psa-rabbitmq", "/etc/rabbitmq/definitions.json"),
    ("mvp", "masked", "psa-elasticsearch", "/etc/elasticsearch/elasticsearch.yml"),
    (
        "mvp",
        "masked",
        "psa-elasticsearch",
        "/etc/elasticsearch/jvm.options.d/heap.options",
    ),
    ("mvp", "masked", "psa-app", f"{APP}/ecosystem.config.js"),
    ("mvp", "masked", "psa-app", f"{APP}/.env"),
    ("mvp", "masked", "psa-app", f"{APP}/config/upstreams.json"),
    ("mvp", "masked", "psa-app", "/usr/local/bin/backup-psa-app.sh"),
    ("mvp", "masked", "psa-app", "/etc/apt/sources.list.d/nodesource.list"),
    ("mvp", "masked", "psa-app", "/etc/apt/preferences.d/nodesource.pref"),
    ("mvp", "masked", "psa-rabbitmq", "/etc/apt/sources.list.d/rabbitmq.list"),
    ("mvp", "masked", "psa-rabbitmq", "/etc/apt/preferences.d/rabbitmq.pref"),
    (
        "mvp",
        "masked",
        "psa-elasticsearch",
        "/etc/apt/sources.list.d/elastic-8.x.list",
    ),
    ("mvp", "secrets", "psa-app", f"{APP}/.env"),
    ("mvp", "secrets", "psa-redis", "/etc/redis/redis.conf"),
    ("mvp", "secrets", "psa-db-master", f"{PG}/psa-bootstrap.sql"),
    ("mvp", "secrets", "psa-rabbitmq", "/etc/rabbitmq/definitions.json"),
    ("production", "masked", "psa-db-master", f"{PG}/conf.d/psa.conf"),
    ("production", "masked", "psa-api-gateway", f"{APP}/config/upstreams.json"),
    ("production", "masked", "psa-tickets", f"{APP}/ecosystem.config.js"),
    ("production", "masked", "psa-tickets", "/usr/local/bin/psa-health-check"),
    ("production", "secrets", "psa-auth", f"{APP}/.env"),
]

SECRET_FILES = {
    f"{APP}/.env",
    "/etc/redis/redis.conf",
    f"{PG}/psa-bootstrap.sql",
    "/etc/rabbitmq/definitions.json",
}


def _compare(expected: Path, actual: str) -> None:
    if REGENERATE and (not expected.exists() or expected.read_text() != actual):
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(actual, encoding="utf-8")
        pytest.fail(f"regenerated {expected.relative_to(ROOT)}: review it in git diff")
    assert expected.exists(), f"no expected output {expected.relative_to(ROOT)}"
    assert actual == expected.read_text(encoding="utf-8")


@pytest.mark.parametrize(("inventory", "mode", "host", "dest"), CASES)
def test_rendered_file_matches_expected(
    inventory: str, mode: str, host: str, dest: str
) -> None:
    files = render_all(load(inventory), reveal=mode == "secrets")
    _compare(
        CASES_DIR / inventory / mode / host / dest.lstrip("/"),
        files[host, dest].content,
    )


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_each_host_gets_the_expected_files_and_modes(inventory: str) -> None:
    files = render_all(load(inventory), reveal=False)
    listing = "".join(
        f"{host} {f.dest} {f.owner}:{f.group} {f.mode}{' secret' if f.secret else ''}\n"
        for (host, _), f in sorted(files.items())
    )
    _compare(CASES_DIR / inventory / "files.txt", listing)


def test_gateway_map_only_where_the_gateway_runs() -> None:
    files = render_all(load("production"), reveal=False)
    hosts = {host for host, dest in files if dest.endswith("/upstreams.json")}
    assert hosts == {"psa-api-gateway"}
    services = json.loads(
        files["psa-api-gateway", f"{APP}/config/upstreams.json"].content
    )
    assert services["services"]["api-gateway"] == {"host": "127.0.0.1", "port": 3000}
    assert services["services"]["auth"] == {"host": "10.0.20.51", "port": 3010}


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_rendering_is_deterministic(inventory: str, tmp_path: Path) -> None:
    first = render_all(load(inventory))
    second = render_all(load(inventory))
    assert first == second
    write_files(list(first.values()), tmp_path / "a")
    write_files(list(second.values()), tmp_path / "b")
    tree = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert tree == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
    )
    for path in tree:
        if (tmp_path / "a" / path).is_file():
            assert (tmp_path / "a" / path).read_bytes() == (
                tmp_path / "b" / path
            ).read_bytes()


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_secret_files_are_written_0600_and_others_keep_their_mode(
    inventory: str, tmp_path: Path
) -> None:
    files = render_all(load(inventory))
    assert {dest for (_, dest), f in files.items() if f.secret} == SECRET_FILES
    write_files(list(files.values()), tmp_path)
    for (host, dest), rendered in files.items():
        mode = (tmp_path / host / dest.lstrip("/")).stat().st_mode & 0o777
        assert mode == (0o600 if rendered.secret else int(rendered.mode, 8)), dest
    scripts = [d for (_, d), f in files.items() if f.mode == "0755"]
    assert "/usr/local/bin/backup-psa-app.sh" in scripts


def _spellings(value: str) -> set[str]:
    """Every way a template may write a secret: raw, quoted, escaped, encoded."""
    return {
        value,
        json.dumps(value)[1:-1],
        urllib.parse.quote(value, safe=""),
        value.replace("'", "''"),
        value.replace("\\", "\\\\").replace('"', '\\"'),
    }


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_masked_render_holds_no_real_secret(inventory: str) -> None:
    loaded = load(inventory)
    # The real values are loaded; only reveal=False may keep them out.
    rendering = Renderer(
        ROOT / "templates",
        loaded,
        {name: Secret(name, value) for name, value in TEST_SECRETS.items()},
    )
    books = playbooks()
    contents = [
        f.content
        for container in loaded.inventory.containers
        for f in rendering.files(container, books, reveal=False)
    ]
    for value in TEST_SECRETS.values():
        for spelling in _spellings(value):
            assert not any(spelling in text for text in contents), spelling
    env = next(c for c in contents if c.count("POSTGRES_PASSWORD=") == 1)
    assert f'POSTGRES_PASSWORD="{MASK}"' in env


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_commands_never_see_secrets(inventory: str) -> None:
    loaded = load(inventory)
    rendering = renderer(loaded)
    books = playbooks()
    for container in loaded.inventory.containers:
        steps = [s for _, s in rendering.steps(container, books)]
        steps += list(rendering.handlers(container, books).values())
        for step in steps:
            if step.command is None:
                continue
            text = " ".join(filter(None, [step.command.run, step.command.unless]))
            assert "{{" not in text and "{%" not in text, step.name
            for value in TEST_SECRETS.values():
                for spelling in _spellings(value):
                    assert spelling not in text, step.name


def test_a_command_using_a_secret_is_refused(tmp_path: Path) -> None:
    books = _copy_playbooks(tmp_path)
    redis = books / "redis.yml"
    redis.write_text(
        redis.read_text().replace(
            "handlers:",
            "  - name: leak\n    command:\n"
            "      run: redis-cli -a {{ secrets.redis_password }} ping\n\nhandlers:",
        )
    )
    loaded = load("mvp")
    with pytest.raises(TemplateError) as caught:
        renderer(loaded).steps(
            loaded.inventory.find("psa-redis"), load_playbooks(books)
        )
    assert "step 'leak'" in caught.value.message
    assert "'secrets' is undefined" in caught.value.message
    assert caught.value.hint is not None and "secret: true" in caught.value.hint


def test_commands_quote_every_inventory_value() -> None:
    rendering = renderer(load("mvp"))
    for value in ["psa", "a b", "it's", '"$(rm -rf /)"', "x;y|z&", "\\n"]:
        word = rendering.env.from_string("{{ v | shquote }}").render(v=value)
        echoed = subprocess.run(
            ["bash", "-c", f"printf %s {word}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert echoed.stdout == value
        assert shlex.split(word) == [value]


def test_paths_follow_the_inventorys_app_root(tmp_path: Path) -> None:
    text = (ROOT / "inventory/mvp.yml").read_text()
    loaded = load_text(
        text.replace("root: /opt/psa-platform", "root: /srv/psa"), tmp_path
    )
    rendering = renderer(loaded)
    app = loaded.inventory.find("psa-app")
    steps = [s for _, s in rendering.steps(app, playbooks())]
    paths = [s.directory.path for s in steps if s.directory is not None]
    assert "/srv/psa/logs" in paths and not any(p.startswith(APP) for p in paths)
    dests = {f.dest for f in rendering.files(app, playbooks())}
    assert {"/srv/psa/.env", "/srv/psa/ecosystem.config.js"} <= dests
    commands = " ".join(s.command.run for s in steps if s.command is not None)
    assert "/srv/psa/config/pm2-logrotate.conf" in commands and APP not in commands


def test_every_role_command_is_guarded() -> None:
    # An unguarded command would run, and report a change, on every apply.
    for name, book in playbooks().items():
        for step in book.steps:
            if step.command is not None:
                assert step.command.creates or step.command.unless, (
                    f"{name}: {step.name}"
                )


def test_no_rabbitmq_guard_starts_erlang() -> None:
    # Each of RabbitMQ's CLI tools boots an Erlang VM, about a second of CPU;
    # a converged run reads every guard, so none may call one.
    tools = re.compile(r"\brabbitmq(ctl|-diagnostics|-plugins|-queues|-upgrade)\b")
    for step in playbooks()["rabbitmq"].steps:
        if step.command is not None:
            assert not tools.search(step.command.unless or ""), step.name


def test_every_installed_file_says_it_is_managed() -> None:
    # RabbitMQ's definitions file holds only the keys RabbitMQ itself exports:
    # JSON has no comments, and the broker reads every key at boot.
    for (host, dest), rendered in render_all(load("mvp"), reveal=False).items():
        if dest == "/etc/rabbitmq/definitions.json":
            keys = set(json.loads(rendered.content))
            assert keys == {"vhosts", "users", "permissions"}
            continue
        head = "\n".join(rendered.content.splitlines()[:3])
        assert "Managed by psa-infra" in head, f"{host}:{dest}"


# --- RabbitMQ's definitions file -----------------------------------------------

DEFINITIONS = "/etc/rabbitmq/definitions.json"


def _broker_accepts(stored: str, password: str) -> bool:
    """Check a password against a stored hash as RabbitMQ's sha256 module does."""
    raw = base64.b64decode(stored, validate=True)
    salt, digest = raw[:4], raw[4:]
    return (
        len(digest) == 32
        and hashlib.sha256(salt + password.encode()).digest() == digest
    )


def _password_hash(password: object, user: object) -> str:
    template = "{{ password | rabbitmq_password_hash(user) }}"
    return (
        renderer(load("mvp"))
        .env.from_string(template)
        .render(password=password, user=user)
    )


def test_rabbitmq_password_hash_matches_an_independent_computation() -> None:
    password = TEST_SECRETS["rabbitmq_password"]
    key = password.encode()
    salt = hmac.new(key, b"psa-infra rabbitmq salt:psa_app", "sha256").digest()[:4]
    expected = base64.b64encode(salt + hashlib.sha256(salt + key).digest()).decode()
    assert _password_hash(password, "psa_app") == expected
    # Computed with openssl: a change of the derivation would make every
    # broker's definitions file differ, and be imported again, on the next apply.
    assert _password_hash("guest", "guest") == (
        "0pPLrNvH6FEZ7M0jBc0YJKfvDAuoLVZNh4C0rEHFiuaCPKUe"
    )


def test_rabbitmq_password_hash_is_accepted_for_its_password_only() -> None:
    password = TEST_SECRETS["rabbitmq_password"]
    stored = _password_hash(password, "psa_app")
    assert _broker_accepts(stored, password)
    assert not _broker_accepts(stored, password + "x")
    # The salt follows the user too: two users with one password differ.
    assert _password_hash(password, "other") != stored
    assert _password_hash(password, "psa_app") == stored


def test_rabbitmq_password_hash_keeps_masks_and_undefined_names() -> None:
    assert _password_hash(MASK, "psa_app") == MASK
    env = renderer(load("mvp")).env
    for template in [
        "{{ secrets.nope | rabbitmq_password_hash('psa_app') }}",
        "{{ 'pw' | rabbitmq_password_hash(nope) }}",
    ]:
        with pytest.raises(jinja2.UndefinedError):
            env.from_string(template).render(secrets={})


@pytest.mark.parametrize("inventory", ["mvp", "production"])
def test_rabbitmq_definitions_declare_the_app_vhost_user_and_permissions(
    inventory: str,
) -> None:
    loaded = load(inventory)
    settings = loaded.inventory.rabbitmq
    password = TEST_SECRETS["rabbitmq_password"]
    rendered = render_all(loaded)
    host = loaded.inventory.by_role("rabbitmq")[0].hostname
    definitions = rendered[host, DEFINITIONS]
    assert (definitions.owner, definitions.mode, definitions.secret) == (
        "rabbitmq",
        "0600",
        True,
    )
    assert not any(s in definitions.content for s in _spellings(password))

    parsed = json.loads(definitions.content)
    assert parsed["vhosts"] == [{"name": settings.vhost}]
    [user] = parsed["users"]
    assert user["name"] == settings.user and user["tags"] == []
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert _broker_accepts(user["password_hash"], password)
    assert parsed["permissions"] == [
        {
            "user": settings.user,
            "vhost": settings.vhost,
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        }
    ]


def test_rabbitmq_boots_with_the_definitions_and_imports_their_changes() -> None:
    loaded = load("mvp")
    conf = render_all(loaded, reveal=False)[
        "psa-rabbitmq", "/etc/rabbitmq/rabbitmq.conf"
    ]
    lines = conf.content.splitlines()
    assert "definitions.import_backend = local_filesystem" in lines
    assert f"definitions.local.path = {DEFINITIONS}" in lines

    book = playbooks()["rabbitmq"]
    step = next(s for s in book.steps if s.file and s.file.dest == DEFINITIONS)
    assert step.notify == ["import definitions"]
    handler = book.handlers["import definitions"].command
    assert handler is not None
    assert f"rabbitmqctl import_definitions {DEFINITIONS}" in handler.run
    assert "systemctl is-active --quiet rabbitmq-server" in handler.run
    # A boot with a new configuration must find the file it points at.
    names = [s.name for s in book.steps]
    assert names.index(step.name) < names.index("broker configuration")


# --- package sources ----------------------------------------------------------


def _with_sources(tmp_path: Path, **sources: str) -> LoadedInventory:
    """The MVP inventory with a ``packages:`` section stating ``sources``."""
    text = (ROOT / "inventory/mvp.yml").read_text()
    block = "packages:\n" + "".join(f"  {k}: {v}\n" for k, v in sources.items())
    assert text.count("\ndefaults:\n") == 1
    return load_text(text.replace("\ndefaults:\n", f"\n{block}\ndefaults:\n"), tmp_path)


def _role_steps(loaded: LoadedInventory, host: str) -> list[Step]:
    books = playbooks()
    container = loaded.inventory.find(host)
    return [s for name, s in renderer(loaded).steps(container, books) if name != "base"]


NODESOURCE_STEPS = [
    "keyrings directory",
    "NodeSource's signing key",
    "NodeSource's package repository",
    "NodeSource's nodejs preferred over Debian's",
    "package lists with NodeSource's repository",
    "node 20 from NodeSource",
]
UPSTREAM_STEPS = [
    "keyrings directory",
    "Team RabbitMQ's main signing key",
    "signing key of Team RabbitMQ's Erlang repository",
    "signing key of Team RabbitMQ's server repository",
    "Team RabbitMQ's package repositories",
    "Erlang and RabbitMQ preferred from Team RabbitMQ",
    "package lists with Team RabbitMQ's repositories",
]
ELASTIC_STEPS = [
    "apt transport packages",
    "keyrings directory",
    "Elastic's signing key",
    "Elastic's package repository",
    "package lists with Elastic's repository",
    "elasticsearch package",
    "elasticsearch service",
]
NODESOURCE_FILES = {
    "/etc/apt/sources.list.d/nodesource.list",
    "/etc/apt/preferences.d/nodesource.pref",
}
UPSTREAM_FILES = {
    "/etc/apt/sources.list.d/rabbitmq.list",
    "/etc/apt/preferences.d/rabbitmq.pref",
}

# (host, source setting, steps that depend on a source and apply, in order,
#  packages installed by the role's playbook, apt files installed)
SOURCE_CASES = [
    (
        "psa-app",
        "nodejs=nodesource",
        NODESOURCE_STEPS,
        [["cron", "tar", "gzip"], ["nodejs"]],
        NODESOURCE_FILES,
    ),
    (
        "psa-app",
        "nodejs=debian",
        ["node 18 from Debian", "npm from the npm registry"],
        [["cron", "tar", "gzip"], ["nodejs"]],
        set(),
    ),
    (
        "psa-rabbitmq",
        "rabbitmq=upstream",
        UPSTREAM_STEPS,
        [["rabbitmq-server"]],
        UPSTREAM_FILES,
    ),
    ("psa-rabbitmq", "rabbitmq=debian", [], [["rabbitmq-server"]], set()),
    (
        "psa-elasticsearch",
        "elasticsearch=elastic",
        ELASTIC_STEPS,
        [["apt-transport-https", "gnupg"], ["elasticsearch"]],
        {"/etc/apt/sources.list.d/elastic-8.x.list"},
    ),
    (
        "psa-elasticsearch",
        "elasticsearch=none",
        ["elasticsearch group"],
        [],
        set(),
    ),
]


@pytest.mark.parametrize(
    ("host", "setting", "sourced", "packages", "apt_files"), SOURCE_CASES
)
def test_steps_follow_the_package_source(
    tmp_path: Path,
    host: str,
    setting: str,
    sourced: list[str],
    packages: list[list[str]],
    apt_files: set[str],
) -> None:
    key, value = setting.split("=")
    loaded = _with_sources(tmp_path, **{key: value})
    steps = _role_steps(loaded, host)
    books = playbooks()
    role = loaded.inventory.find(host).role
    sourcing = {s.name for s in books[role].steps if "packages" in (s.when or "")}
    assert [s.name for s in steps if s.name in sourcing] == sourced
    assert [s.packages for s in steps if s.packages is not None] == packages
    dests = {f.dest for f in renderer(loaded).files(loaded.inventory.find(host), books)}
    assert {d for d in dests if d.startswith("/etc/apt/")} == apt_files

    # Every step, expanded, as a plan shows it: reviewed in the expected file.
    listing = "".join(f"{s.name}: {describe(s)}\n" for s in steps)
    _compare(CASES_DIR / "sources" / f"{host}.{key}-{value}.txt", listing)


@pytest.mark.parametrize(
    ("host", "setting"),
    [
        ("psa-app", "nodejs=nodesource"),
        ("psa-rabbitmq", "rabbitmq=upstream"),
        ("psa-elasticsearch", "elasticsearch=elastic"),
    ],
)
def test_default_sources_are_the_upstream_ones(
    tmp_path: Path, host: str, setting: str
) -> None:
    key, value = setting.split("=")
    stated = _role_steps(_with_sources(tmp_path, **{key: value}), host)
    assert _role_steps(load("mvp"), host) == stated


@pytest.mark.parametrize(
    ("host", "setting", "ordered"),
    [
        (
            "psa-app",
            "nodejs=nodesource",
            [
                "NodeSource's package repository",
                "NodeSource's nodejs preferred over Debian's",
                "package lists with NodeSource's repository",
                "node 20 from NodeSource",
                "pm2, installed globally",
            ],
        ),
        (
            "psa-rabbitmq",
            "rabbitmq=upstream",
            [
                "Team RabbitMQ's package repositories",
                "Erlang and RabbitMQ preferred from Team RabbitMQ",
                "package lists with Team RabbitMQ's repositories",
                "rabbitmq packages",
                "broker configuration",
            ],
        ),
        (
            "psa-elasticsearch",
            "elasticsearch=none",
            [
                "elasticsearch group",
                "configuration directory",
                "JVM options directory",
                "node configuration",
                "JVM heap size",
            ],
        ),
    ],
)
def test_sources_are_set_up_before_what_needs_them(
    tmp_path: Path, host: str, setting: str, ordered: list[str]
) -> None:
    key, value = setting.split("=")
    names = [s.name for s in _role_steps(_with_sources(tmp_path, **{key: value}), host)]
    assert sorted(ordered, key=names.index) == ordered


@pytest.mark.parametrize(
    ("host", "list_file"),
    [
        ("psa-app", "/etc/apt/sources.list.d/nodesource.list"),
        ("psa-rabbitmq", "/etc/apt/sources.list.d/rabbitmq.list"),
        ("psa-elasticsearch", "/etc/apt/sources.list.d/elastic-8.x.list"),
    ],
)
def test_each_repository_is_signed_by_a_key_a_step_fetches(
    host: str, list_file: str
) -> None:
    loaded = load("mvp")
    steps = _role_steps(loaded, host)
    fetched = {s.command.creates for s in steps if s.command and s.command.creates}
    content = render_all(loaded, reveal=False)[host, list_file].content
    entries = [line for line in content.splitlines() if line.startswith("deb ")]
    assert entries
    for entry in entries:
        found = re.search(r"signed-by=([^ \]]+)", entry)
        assert found is not None and found.group(1) in fetched, entry
        # The refresh's guard looks for the repository it refreshes.
        site = entry.split()[-3].removeprefix("https://").split("/")
        update = next(s for s in steps if s.name.startswith("package lists with"))
        assert update.command is not None and update.command.unless is not None
        assert site[0] in update.command.unless, entry


def test_elasticsearch_without_a_package_source(tmp_path: Path) -> None:
    none = _with_sources(tmp_path, elasticsearch="none")
    steps = {s.name: s for s in _role_steps(none, "psa-elasticsearch")}
    assert not any(s.service for s in steps.values())
    assert not any("elastic.co" in describe(s) for s in steps.values())
    group = steps["elasticsearch group"].command
    assert group is not None
    assert (group.run, group.unless) == (
        "groupadd --system elasticsearch",
        "getent group elasticsearch",
    )
    for name in ("configuration directory", "JVM options directory"):
        directory = steps[name].directory
        assert directory is not None
        assert (directory.owner, directory.group, directory.mode) == (
            "root",
            "elasticsearch",
            "2750",
        )

    # The node's files are the same as with Elastic's package.
    books = playbooks()
    with_package = render_all(load("mvp"), reveal=False)
    host = none.inventory.find("psa-elasticsearch")
    for rendered in renderer(none, real=False).files(host, books):
        assert with_package["psa-elasticsearch", rendered.dest] == rendered

    # Their handler must not fail where there is no service to restart.
    handler = renderer(none).handlers(host, books)["restart elasticsearch"]
    assert handler.command is not None
    assert handler.command.run == (
        "if systemctl cat elasticsearch.service >/dev/null 2>&1; "
        "then systemctl restart elasticsearch.service; fi"
    )


def test_a_failed_key_download_leaves_no_key_behind(tmp_path: Path) -> None:
    # gpg writes an empty file before it sees there is no key; that file
    # would satisfy 'creates' on every later run.
    for name in ("app", "rabbitmq", "elasticsearch"):
        for step in playbooks()[name].steps:
            command = step.command
            if command is None or "gpg --dearmor" not in command.run:
                continue
            assert command.creates is not None
            key = tmp_path / name / command.creates.lstrip("/")
            run = command.run.replace(command.creates, str(key))
            url = re.search(r"https://\S+", run)
            assert url is not None
            key.parent.mkdir(parents=True, exist_ok=True)
            failed = subprocess.run(
                ["bash", "-c", run.replace(url.group(0), "file:///nonexistent")],
                capture_output=True,
                check=False,
            )
            assert failed.returncode != 0, step.name
            assert not key.exists(), step.name


# --- template errors --------------------------------------------------------


def _broken_renderer(
    tmp_path: Path, name: str, text: str
) -> tuple[Renderer, LoadedInventory]:
    templates = tmp_path / "templates"
    (templates / "broken").mkdir(parents=True)
    (templates / "broken" / name).write_text(text)
    loaded = load("mvp")
    return Renderer(templates, loaded, {}), loaded


TEMPLATE_ERRORS = [
    (
        "syntax.j2",
        "# line 1\nport = {{ inventory.redis.port }}\n{% if container.role %}\nx\n",
        4,
        "Unexpected end of template",
    ),
    (
        "lexer.j2",
        "# line 1\nline 2\n{# a comment that never ends\nline 4\n",
        3,
        "Missing end of comment tag",
    ),
    (
        "undefined.j2",
        "# line 1\nport = {{ inventory.redis.port }}\nhost = {{ nosuch.ip }}\nend\n",
        3,
        "'nosuch' is undefined",
    ),
    (
        "attribute.j2",
        "# line 1\n\nname = {{ container.hostnme | upper }}\nend\n",
        3,
        "hostnme",
    ),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), TEMPLATE_ERRORS)
def test_template_error_names_template_line_and_shows_lines(
    tmp_path: Path, name: str, text: str, line: int, message: str
) -> None:
    rendering, loaded = _broken_renderer(tmp_path, name, text)
    context = rendering.context(loaded.inventory.find("psa-redis"))
    with pytest.raises(TemplateError) as caught:
        rendering.render(f"broken/{name}", context)
    error = caught.value.message
    assert error.startswith(f"template broken/{name} line {line}: "), error
    assert message in error
    lines = text.splitlines()
    assert f">    {line} | {lines[line - 1]}" in error
    assert f"     {line - 1} | {lines[line - 2]}" in error


def test_missing_template_is_named(tmp_path: Path) -> None:
    rendering, loaded = _broken_renderer(tmp_path, "x.j2", "")
    with pytest.raises(TemplateError, match="template broken/nothere.j2 not found"):
        rendering.render(
            "broken/nothere.j2", rendering.context(loaded.inventory.containers[0])
        )


def test_misspelt_when_is_an_error_not_a_skipped_file(tmp_path: Path) -> None:
    books = _copy_playbooks(tmp_path)
    app = books / "app.yml"
    app.write_text(app.read_text().replace('in services"', 'in servces"'))
    loaded = load("mvp")
    with pytest.raises(
        TemplateError, match="step 'gateway upstream map': bad 'when'.*servces"
    ):
        renderer(loaded).files(loaded.inventory.find("psa-app"), load_playbooks(books))


# --- playbook errors --------------------------------------------------------


def _copy_playbooks(tmp_path: Path) -> Path:
    books = tmp_path / "playbooks"
    shutil.copytree(ROOT / "playbooks", books)
    return books


# (case, (text, replacement), message pattern, text on the line it names)
PLAYBOOK_ERRORS = [
    (
        "unknown key",
        ("      secret: true\n", "      secret: true\n      modee: 0600\n"),
        r"playbooks/redis\.yml line \d+: steps\[1\]\.file\.modee: unknown key 'modee'$",
        "modee: 0600",
    ),
    (
        "two actions",
        (
            "    packages: [redis-server, redis-tools]\n",
            "    packages: [redis-server, redis-tools]\n    service: {name: redis}\n",
        ),
        r"playbooks/redis\.yml line \d+: steps\[0\]: a step has exactly one of "
        r".*\(this one has packages, service\)$",
        "- name: redis packages",
    ),
    (
        "unknown handler",
        ("notify: [restart redis]", "notify: [restart rediss]"),
        r"playbooks/redis\.yml line \d+: steps\[1\]\.notify\[0\]: unknown handler "
        r"'restart rediss' \(handlers: restart redis\)$",
        "notify: [restart rediss]",
    ),
    (
        "bad mode",
        ('      mode: "0750"\n', '      mode: "750"\n'),
        r"playbooks/redis\.yml line \d+: steps\[2\]\.directory\.mode: .*pattern",
        'mode: "750"',
    ),
    (
        "wrong role",
        ("role: redis\n", "role: redis-server\n"),
        r"playbooks/redis\.yml line \d+: role: 'redis-server' does not match",
        "role: redis-server",
    ),
]


@pytest.mark.parametrize(("case", "change", "pattern", "line_text"), PLAYBOOK_ERRORS)
def test_bad_playbook_names_file_line_and_key(
    tmp_path: Path, case: str, change: tuple[str, str], pattern: str, line_text: str
) -> None:
    books = _copy_playbooks(tmp_path)
    redis = books / "redis.yml"
    text = redis.read_text()
    assert text.count(change[0]) == 1, case
    redis.write_text(text.replace(change[0], change[1]))
    with pytest.raises(PlaybookError) as caught:
        load_playbooks(books, Path("playbooks"))
    message = caught.value.message
    assert re.match(pattern, message), message
    found = re.search(r" line (\d+):", message)
    assert found is not None
    assert line_text in redis.read_text().splitlines()[int(found.group(1)) - 1]
