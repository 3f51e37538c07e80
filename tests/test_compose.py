"""compose.yaml and services/Dockerfile: the stack they describe is the one fedmq can run.

`docker-compose config` validates and normalises compose.yaml (no Docker engine needed); the
tests then check the services, the broker's ports and mounted configuration, and that every
fedmq service runs the `fedmq` console script with a subcommand whose arguments fedmq's own
argument parser accepts. Skipped only when no `docker-compose` binary is installed
(`bash .ci/system-deps.sh` installs Debian's, as root).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "services" / "Dockerfile"
WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}  # service -> label range
TESTING = "testing"
AMQP_URL = "amqp://guest:guest@rabbitmq:5672/"


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
    return {name: s for name, s in config["services"].items() if name != "rabbitmq"}


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
    assert set(config["services"]) >= {"rabbitmq", *WORKERS, TESTING, "coordinator"}


def test_broker_publishes_amqp_and_management_ports(config):
    published = set()
    for port in config["services"]["rabbitmq"]["ports"]:
        if isinstance(port, dict):  # long syntax, as `config` normalises it
            published.add((int(port["published"]), int(port["target"])))
        else:
            host, _, container = str(port).rpartition(":")
            published.add((int(host.rpartition(":")[2]), int(container.split("/")[0])))
    assert {(5672, 5672), (15672, 15672)} <= published


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


def test_broker_mounts_broker_config(config):
    broker = config["services"]["rabbitmq"]
    assert broker["image"].startswith("rabbitmq:3.10-management")
    mounts = _bind_mounts(broker)
    for name in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
        source, read_only = mounts[f"/etc/rabbitmq/{name}"]
        assert source.resolve() == (ROOT / "broker_config" / name).resolve()
        assert source.exists() and read_only, name
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
    for name in (*WORKERS, TESTING):
        assert config["services"][name]["restart"] == "on-failure", name


# --- what the services run --------------------------------------------------------------------

def test_services_run_the_fedmq_console_script(config):
    script = console_script()
    for name, service in fedmq_services(config).items():
        args = argv(service)
        expected = "train" if name == "coordinator" else "worker"
        assert args[:2] == [script, expected], f"{name} runs {args}"
        assert option(args, "--url") == AMQP_URL, name


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
