"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests agree with the configs
the processes read (tests/deploy/manifests.py says how); `kubectl kustomize` renders the overlay."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from broker.config import BrokerConfig
from node.config import NodeConfig
from tests.deploy.manifests import (
    CITIES,
    CONFIGS,
    DEPLOY,
    check_all,
    config_path,
    dirs_of_files,
    dockerfile_instructions,
    exec_form,
    listen_ports,
    load_config,
    port,
)

K8S = DEPLOY / "k8s"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _objects(paths: list[Path]) -> list[dict[str, Any]]:
    return [
        d
        for p in paths
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def _example_configs() -> dict[str, NodeConfig | BrokerConfig]:
    configs: dict[str, NodeConfig | BrokerConfig] = {
        p.name: NodeConfig.load(p) for p in sorted(CONFIGS.glob("node-*.toml"))
    }
    configs["broker.toml"] = BrokerConfig.load(CONFIGS / "broker.toml")
    return configs


def test_there_is_something_to_check() -> None:
    assert len(YAML_FILES) >= 10
    assert {f"node-{c}.toml" for c in CITIES} | {"broker.toml"} <= set(_example_configs())


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)
    for d in docs:
        if d.get("kind") == "Kustomization":  # everything it names is there
            named = [*d.get("resources", []), *(p["path"] for p in d.get("patches", []))]
            named += [f for g in d.get("configMapGenerator", []) for f in g["files"]]
            assert named and all((path.parent / n).exists() for n in named), path
        elif "kind" in d:
            assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path


def test_every_example_config_uses_postgresql_and_a_health_listener() -> None:
    for name, config in _example_configs().items():
        assert config.database.startswith("postgresql://"), name
        assert "@postgres:5432/" in config.database, name
        assert config.health_listen, f"{name}: probes need health_listen"
        if isinstance(config, NodeConfig):
            assert config.data.startswith("postgresql://citybroker_reader@"), name


# --- Dockerfile ----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((DEPLOY / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    instructions = _dockerfile()
    stages = [args for word, args in instructions if word == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS builder")
    assert any(w == "COPY" and a.startswith("--from=builder") for w, a in instructions)
    users = [args for word, args in instructions if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    args = {a.split("=")[0]: a.split("=")[1] for w, a in instructions if w == "ARG" and "=" in a}
    uid = args.get(uid.strip("${}"), uid)
    assert uid not in ("root", "0") and int(uid) >= 1000
    # the runtime stage (after the last FROM) has no compilers or source tree copied in
    runtime = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    assert [a for w, a in runtime if w == "COPY"] == [
        "--from=builder /opt/citybroker /opt/citybroker"
    ]


def test_dockerfile_healthcheck_asks_grpc_health_on_every_configs_health_port() -> None:
    (check,) = [args for word, args in _dockerfile() if word == "HEALTHCHECK"]
    options, _, command = check.partition("CMD")
    assert "--interval" in options and "--timeout" in options
    words = exec_form(command.strip())
    assert words[:2] == ["citybroker", "health"]
    address = words[words.index("--address") + 1]
    assert address.startswith("127.0.0.1:")
    for name, config in _example_configs().items():
        assert port(config.health_listen) == port(address), name


def test_dockerfile_exposes_the_configs_ports_and_declares_their_directories() -> None:
    instructions = _dockerfile()
    exposed = {int(p) for w, a in instructions if w == "EXPOSE" for p in a.split()}
    (volumes,) = [exec_form(a) for w, a in instructions if w == "VOLUME"]
    for name, config in _example_configs().items():
        assert listen_ports(config) <= exposed, name
        own, shared = dirs_of_files(config)
        assert own | shared <= set(volumes), name
    (entry,) = [exec_form(a) for w, a in instructions if w == "ENTRYPOINT"]
    assert entry == ["citybroker"]
    env = " ".join(a for w, a in instructions if w == "ENV")
    assert "PGPASSFILE=/etc/citybroker/keys/pgpass" in env


# --- compose -------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (host path relative to deploy/, mode) of a service's bind mounts."""
    out = {}
    for spec in service.get("volumes", []):
        host, container, *mode = spec.split(":")
        out[container] = (host, mode[0] if mode else "rw")
    return out


def test_compose_runs_three_nodes_a_broker_and_postgresql() -> None:
    services = _compose()["services"]
    assert set(services) == {f"{c}-node" for c in CITIES} | {"broker", "postgres"}
    for name, service in services.items():
        if name != "postgres":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()


def test_compose_services_read_their_config_at_the_mounted_path() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if name == "postgres":
            continue
        path, config = config_path(service["command"]), load_config(service["command"])
        mounts = _mounts(service)
        host, mode = mounts[str(path.parent)]
        assert mode == "ro" and (DEPLOY / host / path.name).exists(), name
        assert (DEPLOY / host).resolve() == CONFIGS.resolve()
        if isinstance(config, NodeConfig):
            assert name == f"{config.city}-node"  # the same name as the Kubernetes Service
        own, shared = dirs_of_files(config)
        for directory in own | shared:
            assert mounts[directory][1] == "ro", f"{name}: {directory} must be read-only"
        (keys_dir,) = own
        assert mounts[keys_dir][0] == f"./secrets/{name.removesuffix('-node')}"
        # The PostgreSQL server the config names is the compose service.
        host_port = config.database.split("@", 1)[1].split("/", 1)[0]
        assert host_port.split(":")[0] in services


def test_compose_publishes_only_the_brokers_partner_port() -> None:
    services = _compose()["services"]
    broker = BrokerConfig.load(CONFIGS / "broker.toml")
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"broker": [f"{port(broker.listen)}:{port(broker.listen)}"]}


def test_compose_postgresql_creates_every_database_the_configs_name() -> None:
    compose = _compose()
    init = (DEPLOY / "postgres" / "init.sh").read_text()
    for name, config in _example_configs().items():
        database = config.database.rsplit("/", 1)[1]
        assert f"CREATE DATABASE {database};" in init, name
    assert "CREATE ROLE citybroker_reader" in init
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "citybroker"
    for secret in postgres["secrets"]:
        assert compose["secrets"][secret]["file"].startswith("./secrets/")


# --- Kubernetes ----------------------------------------------------------------------------------


def test_kubernetes_base_files_agree_with_the_configs() -> None:
    objects = _objects(sorted((K8S / "base").rglob("*.yaml")))
    pods = check_all(objects)
    assert sorted(p.deployment["metadata"]["name"] for p in pods) == ["broker", "node"]


def _kustomize(target: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed: cannot render the kustomizations (apt install kubectl)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_kustomize_renders_the_base() -> None:
    objects = _kustomize(K8S / "base")
    check_all(objects)


def test_kustomize_renders_the_example_overlay_with_three_cities() -> None:
    objects = _kustomize(K8S / "overlays" / "example")
    pods = check_all(objects)
    nodes = {p.config.city: p for p in pods if isinstance(p.config, NodeConfig)}
    assert set(nodes) == set(CITIES)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for city, pod in nodes.items():
        assert pod.deployment["metadata"]["name"] == f"{city}-node"
        assert ("Service", f"{city}-node") in names  # the node's address in the trust bundle
        assert ("NetworkPolicy", f"{city}-node") in names
        assert pod.labels["app.kubernetes.io/instance"] == city
        secrets = {v["secret"]["secretName"] for v in pod.spec["volumes"] if "secret" in v}
        assert secrets == {f"{city}-node-keys", "citybroker-federation"}
    assert all(
        o["metadata"].get("namespace") == "citybroker" for o in objects if o["kind"] != "Namespace"
    )
    images = {c["image"] for p in pods for c in p.spec["containers"] + p.spec["initContainers"]}
    assert len(images) == 1
    # One generated ConfigMap holds every example config, byte for byte.
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    for name in _example_configs():
        assert cm["data"][name] == (CONFIGS / name).read_text()
    assert {p.config_path for p in pods} == {
        PurePosixPath("/etc/citybroker/config/node.toml"),
        PurePosixPath("/etc/citybroker/config/broker.toml"),
    }
