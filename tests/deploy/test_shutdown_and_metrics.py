"""The deploy files leave the processes time to stop gracefully and let Prometheus scrape them:
the orchestrators' grace periods exceed the configs' shutdown_grace_s, and the metrics port the
configs set is the one the pods declare and announce."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.manifests import CONFIGS, DEPLOY, load_config, pods, port


def _base_objects() -> list[dict[str, Any]]:
    paths = sorted((DEPLOY / "k8s" / "base").rglob("*.yaml"))
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d and "kind" in d]


def test_grace_periods_and_metrics_ports_agree_with_the_configs() -> None:
    for pod in pods(_base_objects()):
        name = pod.deployment["metadata"]["name"]
        assert pod.spec["terminationGracePeriodSeconds"] > pod.config.shutdown_grace_s, name
        annotations = pod.deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port(pod.config.metrics_listen)), name
        ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
        assert ports["metrics"] == port(pod.config.metrics_listen), name
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "command" not in service:
            continue
        grace = float(str(compose["x-citybroker"]["stop_grace_period"]).removesuffix("s"))
        config = load_config(service["command"])
        assert grace > config.shutdown_grace_s, name
        assert config.metrics_listen, f"{name}: {CONFIGS} configs set metrics_listen"
