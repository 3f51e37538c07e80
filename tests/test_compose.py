"""compose.yaml and services/Dockerfile: the stack they describe is the one fedmq can run.

`docker-compose config` validates and normalises compose.yaml (no Docker engine needed); the
tests then check the services, the broker's ports and mounted configuration, and that every
fedmq service runs the `fedmq` console script with a subcommand whose arguments fedmq's own
argument parser accepts. Those are skipped only when no `docker-compose` binary is installed
(`bash .ci/system-deps.sh` installs Debian's, as root). What an operator relies on is checked
on the YAML itself (PyYAML) whether it is installed or not: each service logs in as its own user
with its own secret; no URL, command line or environment variable carries a password; `guest`
appears nowhere; ports are published on 127.0.0.1 only; the broker image is a pinned 4.x minor;
each worker keeps its state in a named volume of its own and has a healthcheck on its health
file; the coordinator keeps its runs in a named volume and starts once every worker is healthy.
services/provision.sh, which makes the users, runs against the test broker.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "services" / "Dockerfile"
WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}  # service -> label range
TESTING = "testing"
#: the one-shot service that makes the broker users (services/provision.sh)
PROVISION = "provision"


def amqp_url(user: str) -> str:
    """A service's broker URL: its own user, no password (FEDMQ_AMQP_PASSWORD_FILE names it)."""
    return f"amqp://{user}@rabbitmq:5672/"


def _yaml_to_json(text: str, compose_exe: str) -> dict:
    """Parse the YAML `docker-compose config` printed. PyYAML when this interpreter has it;
    otherwise Compose v1's own Python interpreter (Compose v1 depends on PyYAML)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    interpreter = Path(compose_exe).read_bytes()[:200].split(b"\n")[0][2:].decode().split()
    convert = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    result = subprocess.run([*interpreter, "-c", convert], input=text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    """compose.yaml as `docker-compose config` resolves it (anchors merged, paths absolute)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("the docker-compose binary is not installed; `bash .ci/system-deps.sh` "
                    "installs Debian's docker-compose package when run as root")
    run = lambda *extra: subprocess.run([exe, "-f", str(COMPOSE), "config", *extra],  # noqa: E731
                                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    result = run()
    assert result.returncode == 0, f"docker-compose rejects compose.yaml:\n{result.stderr}"
    if Path(exe).read_bytes()[:2] == b"#!":  # Compose v1: a Python script
        return _yaml_to_json(result.stdout, exe)
    as_json = run("--format", "json")  # Compose v2 (Go) prints JSON itself
    assert as_json.returncode == 0, as_json.stderr
    return json.loads(as_json.stdout)


def fedmq_services(config: dict) -> dict[str, dict]:
    """The services that run fedmq on the broker (not the broker, not provisioning)."""
    return {name: s for name, s in config["services"].items()
            if name not in ("rabbitmq", PROVISION)}


def dockerfile_entrypoint() -> list[str]:
    [line] = [l for l in DOCKERFILE.read_text().splitlines() if l.startswith("ENTRYPOINT")]
    return json.loads(line.removeprefix("ENTRYPOINT"))


def argv(service: dict) -> list[str]:
    """The program and arguments the service's container runs: entrypoint + command."""
    entrypoint = service.get("entrypoint") or dockerfile_entrypoint()
    command = service.get("command") or []
    as_list = lambda v: v.split() if isinstance(v, str) else list(v)  # noqa: E731
    return as_list(entrypoint) + as_list(command)


def console_script() -> str:
    """The name pyproject.toml gives the console script that runs fedmq.cli:main."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [name] = [name for name, target in scripts.items() if target == "fedmq.cli:main"]
    return name


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- the services -------------------------------------------------------------------------------

def test_all_services_are_declared(config):
    assert set(config["services"]) >= {"rabbitmq", PROVISION, *WORKERS, TESTING, "coordinator"}


def published_ports(service: dict) -> set[tuple[str, int, int]]:
    """(host address, host port, container port) of each port the service publishes, for the
    short syntax ("127.0.0.1:5672:5672/tcp") and the long one (`config` of Compose v2); the
    address is "" when the port is published on every interface."""
    published = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax, as Compose v2's `config` normalises it
            published.add((port.get("host_ip", ""), int(port["published"]),
                           int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) == 1:  # "5672": a random host port on every interface
                parts = ["", "0", parts[0]]
            address = ":".join(parts[:-2])
            published.add((address, int(parts[-2] or 0), int(parts[-1])))
    return published


def test_broker_publishes_amqp_and_management_ports_on_loopback_only(config):
    assert {("127.0.0.1", 5672, 5672), ("127.0.0.1", 15672, 15672)} <= \
        published_ports(config["services"]["rabbitmq"])


def _bind_mounts(service: dict) -> dict[str, tuple[Path, bool]]:
    """container path -> (host path, read-only), for both of `config`'s volume syntaxes."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = (Path(volume["source"]),
                                            bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            if source.startswith(("/", ".")):
                mounts[target] = (Path(source), "ro" in mode[0].split(",") if mode else False)
    return mounts


#: where the broker's rabbitmq.conf is mounted: in conf.d, after the official image's own
#: conf.d files (10-defaults.conf sets loopback_users.guest = false; the last value wins)
BROKER_CONF = "/etc/rabbitmq/conf.d/99-fedmq.conf"
IMAGE_CONF_D = ("10-defaults.conf", "20-management_agent.disable_metrics_collector.conf")


def test_broker_mounts_broker_config(config):
    broker = config["services"]["rabbitmq"]
    mounts = _bind_mounts(broker)
    for target, name in ((BROKER_CONF, "rabbitmq.conf"),
                         ("/etc/rabbitmq/enabled_plugins", "enabled_plugins"),
                         ("/etc/rabbitmq/definitions.json", "definitions.json")):
        source, read_only = mounts[target]
        assert source.resolve() == (ROOT / "broker_config" / name).resolve()
        assert source.exists() and read_only, name
    assert "/etc/rabbitmq/rabbitmq.conf" not in mounts  # read before conf.d: it would lose
    assert sorted([*IMAGE_CONF_D, Path(BROKER_CONF).name])[-1] == Path(BROKER_CONF).name
    # rabbitmq.conf's load_definitions must name the path definitions.json is mounted at
    assert re.search(r"^load_definitions\s*=\s*/etc/rabbitmq/definitions\.json\s*$",
                     (ROOT / "broker_config" / "rabbitmq.conf").read_text(), re.M)
    assert "rabbitmq-diagnostics" in broker["healthcheck"]["test"]


def test_fedmq_services_share_one_image_and_wait_for_the_broker(config):
    for name, service in fedmq_services(config).items():
        build = service["build"]
        assert Path(build["context"]).resolve() == ROOT.resolve(), name
        assert build.get("dockerfile") == "services/Dockerfile", name
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        # their users exist before they log in
        assert service["depends_on"][PROVISION]["condition"] == \
            "service_completed_successfully", name
    for name in (*WORKERS, TESTING):
        assert config["services"][name]["restart"] == "on-failure", name


# --- what the services run --------------------------------------------------------------------

def test_services_run_the_fedmq_console_script(config):
    script = console_script()
    for name, service in fedmq_services(config).items():
        args = argv(service)
        expected = "train" if name == "coordinator" else "worker"
        assert args[:2] == [script, expected], f"{name} runs {args}"
        assert option(args, "--url") == amqp_url(name), name


def test_worker_commands_name_their_id_and_data(config):
    for name, labels in WORKERS.items():
        args = argv(config["services"][name])
        assert option(args, "--id") == name
        assert option(args, "--dataset") == "mnist5k"
        assert option(args, "--labels") == labels
        assert "--testing" not in args
    testing = argv(config["services"][TESTING])
    assert option(testing, "--id") == TESTING and "--testing" in testing
    coordinator = argv(config["services"]["coordinator"])
    assert option(coordinator, "--workers").split(",") == list(WORKERS)
    assert option(coordinator, "--testing") == TESTING


def test_worker_commands_parse_with_the_fedmq_cli(config, capsys):
    """The exact arguments compose passes are accepted by `fedmq worker` (fedmq.service)."""
    from fedmq.cli import build_parser

    for name in (*WORKERS, TESTING):
        args = argv(config["services"][name])[1:]  # without the console script itself
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            parsed = None
        if parsed is None:
            pytest.fail(f"fedmq's CLI rejects service {name!r}'s command {args}: "
                        f"{capsys.readouterr().err.strip()}", pytrace=False)
        assert parsed.command == "worker"


def test_the_provision_service_shares_the_brokers_loopback(config):
    """guest may log in from the broker's own loopback only (broker_config/rabbitmq.conf):
    provision reaches it by sharing the broker's network namespace."""
    provision = config["services"][PROVISION]
    assert provision["network_mode"] == "service:rabbitmq"
    assert provision["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert provision["entrypoint"] == ["sh", "/src/services/provision.sh"]
    assert provision.get("restart", "no") == "no"


# --- credentials (compose.yaml read as YAML: needs no docker-compose) --------------------------

def raw_compose() -> dict:
    yaml = pytest.importorskip("yaml")  # the dev extra installs it
    return yaml.safe_load(COMPOSE.read_text())  # anchors and `<<` merges resolved


def secret_names(service: dict) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def test_each_service_logs_in_as_its_own_user_with_its_own_secret():
    compose = raw_compose()
    services = {name: s for name, s in compose["services"].items()
                if name not in ("rabbitmq", PROVISION)}
    assert set(services) == {*WORKERS, TESTING, "coordinator"}
    users, files = {}, {}
    for name, service in services.items():
        url = urllib.parse.urlsplit(option(service["command"], "--url"))
        assert url.password is None, f"{name}'s URL carries a password"
        assert url.username == name, name
        [secret] = secret_names(service)  # its own password, and no one else's
        assert service["environment"]["FEDMQ_AMQP_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        users[name], files[name] = url.username, compose["secrets"][secret]["file"]
    assert len(set(users.values())) == len(users) and len(set(files.values())) == len(files)
    # every secret lives where services/make-secrets.sh writes it, which git and docker ignore
    for path in files.values():
        assert re.fullmatch(r"\./services/secrets/[a-z]+\.password", path), path
    for ignore in (".gitignore", ".dockerignore"):
        assert "services/secrets/" in (ROOT / ignore).read_text().split(), ignore


def test_provision_makes_every_user_with_its_role_and_workers_grant_the_coordinator():
    compose = raw_compose()
    provision = compose["services"][PROVISION]
    made = dict(spec.split(":") for spec in provision["command"])
    expected = {**dict.fromkeys([*WORKERS, TESTING], "worker"), "coordinator": "coordinator"}
    assert made == expected
    assert set(secret_names(provision)) == {f"{name}_password" for name in made}
    coordinator = urllib.parse.urlsplit(
        option(compose["services"]["coordinator"]["command"], "--url")).username
    for name in (*WORKERS, TESTING):
        assert option(compose["services"][name]["command"], "--grant") == \
            f"coordinator:{coordinator}", name


def test_no_guest_in_compose():
    """No service logs in as guest: the only guest is the broker's loopback administrator,
    which provision uses from inside the broker's network namespace (fedmq broker add-user's
    default admin)."""
    assert not [s for s in _strings(raw_compose()) if "guest" in s.lower()]


#: a URL that carries a password (scheme://user:password@host)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]*@", re.I)


def _commands(service: dict) -> list[str]:
    """Every word a service's container runs: entrypoint, command and healthcheck."""
    words = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        words += value.split() if isinstance(value, str) else [str(v) for v in value]
    test = (service.get("healthcheck") or {}).get("test") or []
    words += test.split() if isinstance(test, str) else [str(v) for v in test]
    return words


def test_no_password_in_any_url_command_or_environment():
    """Passwords come from secret files only (FEDMQ_AMQP_PASSWORD_FILE): none in a URL, on a
    command line (which `ps` and `docker inspect` show), or in an environment variable."""
    compose = raw_compose()
    found = [s for s in _strings(compose) if URL_WITH_PASSWORD.search(s)]
    assert not found, f"URLs with a password in compose.yaml: {found}"
    for name, service in compose["services"].items():
        words = _commands(service)
        assert not [w for w in words if re.match(r"--[a-z-]*password(=|$)", w)
                    and not re.match(r"--[a-z-]*password-(file|out)(=|$)", w)], name
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key in environment:
            assert "PASSWORD" not in key.upper() or key.upper().endswith("_FILE"), (name, key)


def test_no_port_is_published_beyond_the_hosts_loopback():
    """Only the broker publishes ports, and on 127.0.0.1 only: other machines reach neither
    AMQP nor the management API (whose guest is an administrator)."""
    for name, service in raw_compose()["services"].items():
        for address, host_port, container_port in published_ports(service):
            assert address == "127.0.0.1", f"{name} publishes {container_port} on " \
                                           f"{address or 'every interface'}"
    assert {p[2] for p in published_ports(raw_compose()["services"]["rabbitmq"])} == \
        {5672, 15672}


def test_broker_image_is_a_supported_4x_that_permits_fedmqs_global_qos():
    """Not 3.x (end of life); pinned to a minor; 4.3 and later deny global QoS by default,
    which fedmq's worker sets on classic queues, unless the broker's configuration permits it
    (broker_config/README.md, "RabbitMQ versions")."""
    image = raw_compose()["services"]["rabbitmq"]["image"]
    found = re.fullmatch(r"rabbitmq:(\d+)\.(\d+)(?:\.\d+)?-management", image)
    assert found, f"{image}: pin a minor of the management image, e.g. rabbitmq:4.2-management"
    major, minor = int(found.group(1)), int(found.group(2))
    assert major >= 4, f"{image}: RabbitMQ 3.x is end of life"
    conf = (ROOT / "broker_config" / "rabbitmq.conf").read_text()
    if (major, minor) >= (4, 3):
        assert re.search(r"^deprecated_features\.permit\.global_qos\s*=\s*true", conf, re.M)


def worker_services(compose: dict) -> dict[str, dict]:
    return {name: compose["services"][name] for name in (*WORKERS, TESTING)}


def test_each_worker_keeps_its_state_in_a_named_volume_of_its_own():
    compose = raw_compose()
    declared = set(compose.get("volumes") or {})
    used = {}
    for name, service in worker_services(compose).items():
        state_dir = service["environment"].get("FEDMQ_STATE_DIR") or \
            option(service["command"], "--state-dir")
        [volume] = [v.split(":")[0] for v in service.get("volumes", [])
                    if v.split(":")[1] == state_dir]
        assert volume in declared, f"{name}: {volume} is not a named volume"
        used[name] = volume
    assert len(set(used.values())) == len(used), used
    # the image makes the mount points, owned by its user, so a fresh volume is writable
    assert re.search(r"^RUN mkdir -p .*/home/fedmq/state", DOCKERFILE.read_text(), re.M)


def test_the_coordinators_runs_are_in_a_named_volume():
    compose = raw_compose()
    coordinator = compose["services"]["coordinator"]
    runs = option(coordinator["command"], "--runs-dir")
    [volume] = [v.split(":")[0] for v in coordinator["volumes"] if v.split(":")[1] == runs]
    assert volume in (compose.get("volumes") or {})
    assert re.search(rf"^RUN mkdir -p .*{re.escape(runs)}", DOCKERFILE.read_text(), re.M)


def test_every_worker_has_a_healthcheck_reading_its_own_health_file():
    """The worker writes FEDMQ_HEALTH_FILE (fedmq worker --health-file) while it is connected
    and consuming; the healthcheck runs `fedmq worker-health` on that file, which the CLI
    accepts, with a --max-age well above the worker's interval between writes."""
    from fedmq.cli import build_parser
    from fedmq.health import DEFAULT_INTERVAL

    for name, service in worker_services(raw_compose()).items():
        health_file = service["environment"].get("FEDMQ_HEALTH_FILE") or \
            option(service["command"], "--health-file")
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == console_script(), name
        parsed = build_parser(test[2:]).parse_args(test[2:])
        assert parsed.command == "worker-health" and parsed.file == health_file, name
        assert parsed.max_age >= 3 * DEFAULT_INTERVAL, name
        assert not service["healthcheck"].get("disable"), name


def test_the_coordinator_starts_once_every_worker_is_healthy():
    coordinator = raw_compose()["services"]["coordinator"]
    for name in (*WORKERS, TESTING):
        assert coordinator["depends_on"][name]["condition"] == "service_healthy", name


@pytest.mark.amqp
@pytest.mark.slow  # six `fedmq` processes, ~12 s
def test_provision_script_makes_the_users_and_can_run_again(role_users, tmp_path):
    """services/provision.sh, run as compose runs it (NAME:ROLE arguments, secrets in a
    directory), on the run's vhost with run-named users: each logs in with its secret and has
    its role's permissions; a second run (compose up again) changes nothing."""
    import pika

    from fedmq.broker_admin import role_permissions
    from role_users import ADMIN, RUN_PREFIX, VHOST, api, q, url_for

    specs = {RUN_PREFIX + "palice": "worker", RUN_PREFIX + "pcoord": "coordinator"}
    passwords = {}
    for name in specs:
        passwords[name] = f"pw-{name}-{os.getpid()}"
        (tmp_path / f"{name}_password").write_text(passwords[name] + "\n")
        role_users.names.append(name)
    env = dict(os.environ, FEDMQ_SECRETS_DIR=str(tmp_path), FEDMQ_MANAGEMENT_URL=ADMIN["url"],
               FEDMQ_VHOST=VHOST, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for _ in range(2):
        done = subprocess.run(["sh", str(ROOT / "services" / "provision.sh"),
                               *(f"{n}:{r}" for n, r in specs.items())],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    for name, role in specs.items():
        pika.BlockingConnection(pika.URLParameters(url_for(name, passwords[name]))).close()
        granted = api("GET", f"permissions/{q(VHOST)}/{q(name)}")
        assert (granted["configure"], granted["write"], granted["read"]) == \
            role_permissions(role, name)
    bindings = api("GET", f"bindings/{q(VHOST)}/e/fedmq.commands/q/"
                          f"{q('fedmq.worker.' + RUN_PREFIX + 'palice')}")
    assert [b["routing_key"] for b in bindings] == [RUN_PREFIX + "palice"]


# --- the image ----------------------------------------------------------------------------------

def test_dockerfile_installs_fedmq_and_runs_it_unprivileged():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "dataset-fashion-mnist" in text
    assert 'pip install "/src[data]"' in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile_entrypoint() == [console_script()]
