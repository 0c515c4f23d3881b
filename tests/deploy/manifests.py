"""What tests/deploy checks in deploy/: the objects, read as the processes and Kubernetes read them.

No container daemon or cluster runs here, so each check reads a manifest and the example config
the process in it would load (with the real loaders), and compares: ports, paths, probes, selectors.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from broker.config import BrokerConfig
from infra.config import PartyConfig
from node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIGS = DEPLOY / "config"
CITIES = ("aurora", "borealis", "cascadia")

Obj = dict[str, Any]


def port(address: str) -> int:
    """The port of a HOST:PORT address."""
    return int(address.rsplit(":", 1)[1])


def listen_ports(config: PartyConfig) -> set[int]:
    """Every port the process listens on, as its config says."""
    addresses = [config.listen, config.health_listen, config.metrics_listen]
    if isinstance(config, BrokerConfig) and config.peer_listen:
        addresses.append(config.peer_listen)
    return {port(a) for a in addresses if a}


def config_path(command: list[str]) -> PurePosixPath:
    """The --config path of a `node serve` / `broker serve` command."""
    assert "--config" in command, f"no --config in {command}"
    return PurePosixPath(command[command.index("--config") + 1])


def load_config(command: list[str], file_name: str | None = None) -> PartyConfig:
    """The example config in deploy/config that `command` reads (`file_name`, by default the
    --config file's own name), loaded by the loader that command uses."""
    loader = NodeConfig.load if "node" in command else BrokerConfig.load
    return loader(CONFIGS / (file_name or config_path(command).name))


def dirs_of_files(config: PartyConfig) -> tuple[set[str], set[str]]:
    """The directories of the party's private files (keys and its own certificate) and of the
    federation's shared trust files (CA certificate, trust bundle, authority key)."""
    own = {config.signing_key, config.tls.key, config.tls.cert}
    shared = {config.tls.ca_cert, config.trust_bundle, config.authority_key}
    return {str(p.parent) for p in own}, {str(p.parent) for p in shared}


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects `labels`."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class Pod:
    """A Deployment's pod template, with what its main container reads."""

    deployment: Obj
    container: Obj
    config_path: PurePosixPath
    config: PartyConfig

    @property
    def spec(self) -> Obj:
        return dict(self.deployment["spec"]["template"]["spec"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.deployment["spec"]["template"]["metadata"]["labels"])

    @property
    def is_broker(self) -> bool:
        return isinstance(self.config, BrokerConfig)

    def volume(self, name: str) -> Obj:
        return next(v for v in self.spec["volumes"] if v["name"] == name)

    def mount_at(self, container: Obj, path: str) -> Obj:
        mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
        assert mounts, f"{container['name']} mounts nothing at {path}"
        return dict(mounts[0])


def pods(objects: list[Obj]) -> list[Pod]:
    """Every Deployment, with its main container's config loaded."""
    out = []
    for d in (o for o in objects if o["kind"] == "Deployment"):
        spec = d["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        command = [*container.get("command", []), *container["args"]]
        path = config_path(command)
        # The file is a ConfigMap item, mounted in the directory --config points into.
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
        assert mount.get("readOnly") is True, d["metadata"]["name"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        (item,) = [i for i in volume["configMap"]["items"] if i["path"] == path.name]
        assert (CONFIGS / item["key"]).exists(), f"{item['key']} is not in deploy/config"
        out.append(Pod(d, container, path, load_config(command, item["key"])))
    return out


def check_pod(pod: Pod) -> None:
    """Ports, probes, config, key and trust mounts of one Deployment agree with its config."""
    name, c = pod.deployment["metadata"]["name"], pod.container
    assert {p["containerPort"] for p in c["ports"]} == listen_ports(pod.config), name
    health = port(pod.config.health_listen)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health, f"{name} {probe} is not on health_listen"
    own, shared = dirs_of_files(pod.config)
    # Federation trust files: a Secret, read-only, mode 0400.
    (trust_dir,) = shared
    trust = pod.volume(pod.mount_at(c, trust_dir)["name"])
    assert trust["secret"]["defaultMode"] == 0o400 and pod.mount_at(c, trust_dir)["readOnly"]
    # Private files: the init container copies them from a Secret (mode 0400) into a memory
    # volume the main container mounts read-only where the config looks for them.
    (keys_dir,) = own
    keys_mount = pod.mount_at(c, keys_dir)
    assert keys_mount["readOnly"] is True
    assert pod.volume(keys_mount["name"])["emptyDir"]["medium"] == "Memory"
    (init,) = pod.spec["initContainers"]
    script = " ".join(init["command"])
    copied_to = pod.mount_at(init, keys_dir)
    assert copied_to["name"] == keys_mount["name"] and keys_dir in script
    (secret_mount,) = [
        m for m in init["volumeMounts"] if m["mountPath"] != keys_dir and m.get("readOnly")
    ]
    assert pod.volume(secret_mount["name"])["secret"]["defaultMode"] == 0o400
    assert secret_mount["mountPath"] in script and "install -m 0400" in script
    security = pod.spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def check_services(objects: list[Obj], all_pods: list[Pod]) -> None:
    """Each Service selects exactly one Deployment's pods and forwards to its named ports."""
    for svc in (o for o in objects if o["kind"] == "Service" and "selector" in o["spec"]):
        matching = [
            p for p in all_pods if selects({"matchLabels": svc["spec"]["selector"]}, p.labels)
        ]
        assert len(matching) == 1, f"Service {svc['metadata']['name']} selects {len(matching)}"
        ports = {p["name"]: p["containerPort"] for p in matching[0].container["ports"]}
        for sp in svc["spec"]["ports"]:
            assert ports[sp["targetPort"]] == sp["port"], svc["metadata"]["name"]
        assert port(matching[0].config.listen) in {sp["port"] for sp in svc["spec"]["ports"]}


def check_network_policies(objects: list[Obj], all_pods: list[Pod]) -> None:
    """Each node's query port admits the broker's pods and no one else; health stays open."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    brokers = [p for p in all_pods if p.is_broker]
    assert brokers
    for node in (p for p in all_pods if not p.is_broker):
        query = port(node.config.listen)
        mine = [np for np in policies if selects(np["spec"]["podSelector"], node.labels)]
        assert mine, f"no NetworkPolicy selects {node.deployment['metadata']['name']}"
        rules = [r for np in mine for r in np["spec"].get("ingress", [])]
        to_query = [r for r in rules if query in {p["port"] for p in r.get("ports", [])}]
        assert to_query, "no rule opens the query port (all ingress would be denied)"
        for rule in to_query:
            peers = [f["podSelector"] for f in rule.get("from", [])]
            assert peers and all(set(f) == {"podSelector"} for f in rule["from"])
            for b in brokers:
                assert any(selects(s, b.labels) for s in peers)
            for other in (p for p in all_pods if not p.is_broker):
                assert not any(selects(s, other.labels) for s in peers)
        for rule in rules:
            assert rule.get("ports"), "a rule without ports would open the query port"


def check_disruption_budget(objects: list[Obj], all_pods: list[Pod]) -> None:
    """The broker's PodDisruptionBudget selects its pods and leaves one of them to evict."""
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    (broker,) = [p for p in all_pods if p.is_broker]
    assert selects(pdb["spec"]["selector"], broker.labels)
    assert not any(selects(pdb["spec"]["selector"], p.labels) for p in all_pods if not p.is_broker)
    assert 1 <= pdb["spec"]["minAvailable"] < broker.deployment["spec"]["replicas"]


def check_all(objects: list[Obj]) -> list[Pod]:
    """Every check above on one set of objects; their pods."""
    all_pods = pods(objects)
    for pod in all_pods:
        check_pod(pod)
    check_services(objects, all_pods)
    check_network_policies(objects, all_pods)
    check_disruption_budget(objects, all_pods)
    return all_pods


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """The command of a shell- or JSON-form instruction argument, as words."""
    import json

    return list(json.loads(args)) if args.startswith("[") else shlex.split(args)
