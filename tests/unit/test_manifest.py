"""deploy/kubernetes/ checked offline: each object against the Kubernetes API schema (the
Kubernetes Python client's models), and the DaemonSet against what the agent and its
systemd unit need.

The client's models are made from the API's OpenAPI document: each field has its type, the
required ones must be there, and an object read into a model and written back comes out
the same, or it held a field the API does not know (a misspelt key, which kubectl apply
would reject or, worse, drop).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from oomtrace.configfile import KEYS, read_file

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
UNIT = REPO / "systemd" / "oomtrace.service"
MIB = 1 << 20
# Measured in the pod with a cold page cache (docs/daemonset.md): from this limit on the
# child that compiles the programs at start-up no longer competes with its own page cache,
# and the agent is ready as fast as without a limit. The limit keeps a third more.
FULL_SPEED_STARTUP_LIMIT = 192 * MIB
HEADROOM = 4 / 3
# The agent's resident memory once ready, in the pod (tests/containerd/test_daemonset.py).
IDLE_RSS_BYTES = 70 * 10**6

Manifest = dict[str, Any]


def _objects() -> list[tuple[str, Manifest]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


OBJECTS = _objects()


def _one(kind: str) -> Manifest:
    [obj] = [o for _f, o in OBJECTS if o["kind"] == kind]
    return obj


def _daemonset_pod() -> Manifest:
    spec: Manifest = _one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def _container() -> Manifest:
    containers: list[Manifest] = _daemonset_pod()["containers"]
    [container] = containers
    return container


def _lost_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of what `given` holds and `kept` (the model's round trip) does not."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        lost = []
        for key, value in given.items():
            if key not in kept:
                lost.append(f"{path}.{key}")
            else:
                lost += _lost_fields(value, kept[key], f"{path}.{key}")
        return lost
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [path]
        return [p for i, v in enumerate(given) for p in _lost_fields(v, kept[i], f"{path}[{i}]")]
    return [] if given == kept else [f"{path} ({given!r} became {kept!r})"]


@pytest.mark.parametrize(("name", "obj"), OBJECTS, ids=[f"{f}:{o['kind']}" for f, o in OBJECTS])
def test_valid_against_the_api_schema(name: str, obj: Manifest) -> None:
    from kubernetes.client import models

    group_version = obj["apiVersion"].rsplit("/", 1)[-1]
    model = getattr(models, group_version.capitalize() + obj["kind"])
    # Raises on a wrong type, a missing required field or a bad nested object.
    parsed = model.from_dict(obj)
    lost = _lost_fields(obj, json.loads(parsed.to_json()))
    assert lost == [], f"{name}: fields the {obj['apiVersion']} {obj['kind']} API lacks: {lost}"


def test_apply_order_and_namespace() -> None:
    """`kubectl apply -f deploy/kubernetes/` takes the files in name order: the namespace
    first, and every other object in it."""
    assert OBJECTS[0][1]["kind"] == "Namespace"
    namespace = OBJECTS[0][1]["metadata"]["name"]
    for name, obj in OBJECTS[1:]:
        assert obj["metadata"]["namespace"] == namespace, name
    assert _daemonset_pod()["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]


def test_host_access_the_agent_needs() -> None:
    spec = _daemonset_pod()
    assert spec["hostPID"] is True  # /proc of the node's processes; the proc connector
    assert spec["hostNetwork"] is True  # the proc connector reports to the initial netns
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {
        path: volumes[m["name"]]["hostPath"]["path"]
        for path, m in mounts.items()
        if "hostPath" in volumes[m["name"]]
    }
    assert host == {
        "/sys/kernel/tracing": "/sys/kernel/tracing",
        "/sys/fs/cgroup": "/sys/fs/cgroup",
        # A directory: a file mount would keep the socket of a containerd since restarted.
        "/run/containerd": "/run/containerd",
        # The kubelet's config file for its eviction thresholds (node.memory).
        "/var/lib/kubelet": "/var/lib/kubelet",
    }
    for path in host:
        assert mounts[path].get("readOnly") is True, path
    assert mounts["/tmp"]["name"] in volumes and "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_capabilities_are_the_systemd_units() -> None:
    """The same two capabilities as the unit's bounding set, the rest dropped, not
    privileged, a read-only root and the runtime's seccomp filter."""
    match = re.search(r"^CapabilityBoundingSet=(.+)$", UNIT.read_text(), re.MULTILINE)
    assert match is not None
    unit_caps = {c.removeprefix("CAP_") for c in match.group(1).split()}
    sc = _container()["securityContext"]
    assert set(sc["capabilities"]["add"]) == unit_caps
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert _daemonset_pod()["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_memory_sized_from_the_measurements() -> None:
    resources = _container()["resources"]
    limit = _bytes(resources["limits"]["memory"])
    request = _bytes(resources["requests"]["memory"])
    assert limit >= FULL_SPEED_STARTUP_LIMIT * HEADROOM
    assert IDLE_RSS_BYTES < request < limit
    assert "cpu" not in resources["limits"], "a CPU limit would throttle compiles and storms"


def test_probe_and_scrape_annotations_name_the_metrics_port() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    port = ports[container["livenessProbe"]["httpGet"]["port"]]
    annotations = _one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == container["livenessProbe"]["httpGet"]["path"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OOMTRACE_METRICS_LISTEN"]["value"].endswith(f":{port}")


def test_environment_and_configuration_are_the_agents() -> None:
    """Every OOMTRACE_* variable is a setting the agent knows (it ignores others with a
    warning), and the ConfigMap's file passes the agent's own check."""
    known = {key.env for key in KEYS.values()} | {"OOMTRACE_CONFIG"}
    names = {e["name"] for e in _container()["env"]}
    assert {n for n in names if n.startswith("OOMTRACE_")} <= known
    config_path = next(e["value"] for e in _container()["env"] if e["name"] == "OOMTRACE_CONFIG")
    [mount] = [
        m for m in _container()["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
    ]
    volume = next(v for v in _daemonset_pod()["volumes"] if v["name"] == mount["name"])
    data = _one("ConfigMap")["data"]
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    text = data[config_path.rsplit("/", 1)[1]]
    settings = tomllib.loads(text)
    assert settings["format"] == "json"  # one JSON line per event in the container log


def test_configuration_file_is_accepted(tmp_path: Path) -> None:
    [(name, text)] = _one("ConfigMap")["data"].items()
    path = tmp_path / name
    path.write_text(text)
    read_file(path)  # raises ConfigError on an unknown key or a bad value


def test_image_is_the_one_build_image_names() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert _container()["image"] == f"localhost/oomtrace:{version}"
