"""The Kubernetes manifests (deploy/k8s): strictly valid, and consistent with the configs.

Every manifest file is validated offline against the Kubernetes 1.37 schemas with
unknown fields refused (kubernetes-validate --strict). The whole kustomization is
rendered with ``kubectl kustomize`` over keys and configs written by ``cluster init``
(as a user would), and the rendered cluster is checked for what an operator relies
on: one StatefulSet and volume per node, probes on gRPC health, limits everywhere,
no key in a ConfigMap, the validator key only where it signs, a disruption budget
of f, and Service names that match every address the configs dial.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
NODES = 4
IMAGE = "cretoai/node:0.1.0"


def _resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_strictly_valid(path: Path) -> None:
    resources = _resources(path)
    assert resources, f"{path}: no resource"
    for resource in resources:
        _validate(resource)


def test_strict_validation_refuses_an_unknown_field_and_an_unknown_kind() -> None:
    (statefulset,) = _resources(K8S / "base" / "replica.yaml")
    broken = copy.deepcopy(statefulset)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate({"apiVersion": "v1", "kind": "NoSuchKind", "metadata": {"name": "x"}})


def _kustomize() -> list[str]:
    """A kustomize new enough for directory resources and ``labels`` (kubectl ≥ 1.21)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomization is not rendered (files validated)")
    out = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"Kustomize Version: v(\d+)", out)
    if not match or int(match.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is too old to render deploy/k8s: {out.strip()!r}")
    return [kubectl, "kustomize"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """deploy/k8s rendered over a fresh ``cluster init --service-host '{node}-{service}'``."""
    kustomize = _kustomize()
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.key", "*.toml", "cluster.json"))
    subprocess.run(
        [
            *(sys.executable, "-m", "node.cli", "cluster", "init", "--nodes", str(NODES)),
            *("--dir", str(tree), "--service-host", "{node}-{service}"),
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([*kustomize, str(tree)], capture_output=True, text=True, check=True)
    docs = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert len(by_name) == len(docs), "two resources with one kind and name"
    return by_name


def _of_kind(rendered: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for (k, _), doc in sorted(rendered.items()) if k == kind]


def _config_of(rendered: dict[tuple[str, str], dict[str, Any]], node: str) -> dict[str, Any]:
    (cm,) = [
        doc
        for doc in _of_kind(rendered, "ConfigMap")
        if doc["metadata"]["name"].startswith(f"{node}-config-")
    ]
    return tomllib.loads(cm["data"]["node.toml"])


def test_the_rendered_cluster_is_strictly_valid(rendered: dict[Any, dict[str, Any]]) -> None:
    for resource in rendered.values():
        _validate(resource)
    for (kind, name), doc in rendered.items():
        assert kind == "Namespace" or doc["metadata"].get("namespace") == "cretoai", name


def test_each_node_has_a_stable_replica_with_its_own_volume_and_scalable_gateways(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    statefulsets = _of_kind(rendered, "StatefulSet")
    assert [s["metadata"]["name"] for s in statefulsets] == [
        f"node{i}-replica" for i in range(1, NODES + 1)
    ]
    for sts in statefulsets:
        assert sts["spec"]["replicas"] == 1
        claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
        assert claims == {"storage", "consensus"}
        mounts = {
            c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            for c in sts["spec"]["template"]["spec"]["containers"]
        }
        # the database and the signing mark on volumes of their own, each mounted only by
        # its service: restoring a snapshot of the database does not roll back the mark
        assert {n: set(m) & claims for n, m in mounts.items()} == {
            "storage": {"storage"},
            "consensus": {"consensus"},
            "transport": set(),
        }
        data_dir = "/var/lib/cretoai"
        assert mounts["storage"]["storage"] == mounts["consensus"]["consensus"] == data_dir
        assert sts["spec"]["serviceName"] == sts["metadata"]["name"].replace("replica", "consensus")
    gateways = _of_kind(rendered, "Deployment")
    assert [g["metadata"]["name"] for g in gateways] == [
        f"node{i}-gateway" for i in range(1, NODES + 1)
    ]
    assert all(g["spec"]["replicas"] >= 2 for g in gateways)


def _pods(rendered: dict[Any, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"])
        for doc in _of_kind(rendered, "StatefulSet") + _of_kind(rendered, "Deployment")
    ]


def test_every_container_is_probed_limited_and_unprivileged(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    for owner, pod in _pods(rendered):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["automountServiceAccountToken"] is False, owner
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{owner}/{c['name']}"
            assert c["image"] == IMAGE, where  # one image, named in the kustomization
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        for c in spec["containers"]:
            where = f"{owner}/{c['name']}"
            assert "readinessProbe" in c and "livenessProbe" in c, where
            if c["name"] != "gateway":  # internal services: gRPC health of this one service
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    command = c[probe]["exec"]["command"]
                    assert command[:2] == ["cretoai-node", "health"], where
                    assert command[-2:] == ["--service", c["name"]], where


def test_no_key_in_a_config_map_and_the_validator_key_only_where_it_signs(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    for cm in _of_kind(rendered, "ConfigMap"):
        assert "PRIVATE KEY" not in str(cm["data"]), cm["metadata"]["name"]
        assert not any(k.endswith(".key") for k in cm["data"]), cm["metadata"]["name"]
    for owner, pod in _pods(rendered):
        secrets = {
            v["secret"]["secretName"].rsplit("-", 1)[0]
            for v in pod["spec"]["volumes"]
            if "secret" in v
        }
        node = owner.split("-")[0]
        tls_files = {
            item["path"]
            for v in pod["spec"]["volumes"]
            if v.get("secret", {}).get("secretName", "").rsplit("-", 1)[0] == f"{node}-tls"
            for item in v["secret"]["items"]
        }
        if owner.endswith("-gateway"):
            assert secrets == {f"{node}-submitter", f"{node}-tls"}, owner
            # its own certificate only: the services' would let it write storage, ban peers
            assert tls_files == {"ca.crt", "gateway.crt", "gateway.key"}, owner
        else:
            assert tls_files == {"ca.crt", "node.crt", "node.key"}, owner
            assert secrets == {f"{node}-validator", f"{node}-tls"}, owner
            mounts = {
                c["name"]: {m["name"] for m in c["volumeMounts"]} for c in pod["spec"]["containers"]
            }
            assert "signing" not in mounts["storage"], "storage must not see the validator key"
            assert {"signing"} <= mounts["consensus"] & mounts["transport"]


def test_the_disruption_budget_never_takes_more_than_f_replicas(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    n = len(_config_of(rendered, "node1")["validators"])
    f = (n - 1) // 3
    budget = rendered[("PodDisruptionBudget", "replicas")]
    assert budget["spec"]["maxUnavailable"] == f
    selector = budget["spec"]["selector"]["matchLabels"]
    selected = [
        name
        for name, pod in _pods(rendered)
        if selector.items() <= pod["metadata"]["labels"].items()
    ]
    assert selected == [f"node{i}-replica" for i in range(1, NODES + 1)]


def _service_ports(rendered: dict[Any, dict[str, Any]]) -> dict[str, set[tuple[int, str]]]:
    ports: dict[str, set[tuple[int, str]]] = {}
    for svc in _of_kind(rendered, "Service"):
        ports[svc["metadata"]["name"]] = {
            (p["port"], p.get("protocol", "TCP")) for p in svc["spec"]["ports"]
        }
    return ports


def test_the_public_gateway_service_exposes_only_the_api(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    """An Ingress or LoadBalancer exposes Service nodeN-gateway: its metrics (unauthenticated)
    are on a Service of their own, for scraping inside the cluster."""
    ports = _service_ports(rendered)
    for i in range(1, NODES + 1):
        assert ports[f"node{i}-gateway"] == {(8080, "TCP"), (17004, "TCP")}
        assert ports[f"node{i}-gateway-metrics"] == {(17010, "TCP")}


def test_every_address_a_config_dials_is_a_service_of_the_cluster(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    services = _service_ports(rendered)
    for i in range(1, NODES + 1):
        node = f"node{i}"
        config = _config_of(rendered, node)
        for section in ("consensus", "transport", "storage"):
            host, port = config[section]["advertise"].rsplit(":", 1)
            assert host == f"{node}-{section}", (node, section)
            assert (int(port), "TCP") in services[host], (node, section, services[host])
            assert config[section]["listen"].startswith("0.0.0.0:"), (node, section)
        for member in config["validators"]:
            host, port = member["address"].rsplit(":", 1)
            assert (int(port), "UDP") in services[host], member
        assert set(config["tls"]) == {"ca", "cert", "key", "gateway_cert", "gateway_key"}, (
            "internal TLS is a must off loopback, and the gateway holds its own certificate"
        )


def test_every_port_a_service_binds_is_a_port_of_its_container(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    for owner, pod in _pods(rendered):
        node = owner.split("-")[0]
        config = _config_of(rendered, node)
        for c in pod["spec"]["containers"]:
            declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
            section = config[c["name"]]
            binds = [section["metrics"]] + [
                section[k] for k in ("listen", "http", "grpc") if k in section
            ]
            expected = {(int(b.rsplit(":", 1)[1]), "TCP") for b in binds}
            if c["name"] == "transport":
                expected.add((int(section["quic_listen"].rsplit(":", 1)[1]), "UDP"))
            assert declared == expected, (owner, c["name"])


def _admitted(policy: dict[str, Any], port: int, protocol: str) -> list[list[dict[str, Any]]]:
    """The ``from`` lists (``[]``: anyone) of ``policy``'s rules that admit a port."""
    return [
        rule.get("from", [])
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"])
    ]


def test_network_policies_keep_internal_services_to_their_node(
    rendered: dict[Any, dict[str, Any]],
) -> None:
    """Each pod is selected by one policy that admits every port its containers declare
    (none blocked by mistake): the internal gRPC services only from the node's own pods,
    metrics only from inside the cluster, the public API and QUIC from anywhere."""
    policies = _of_kind(rendered, "NetworkPolicy")
    for owner, pod in _pods(rendered):
        node = owner.split("-")[0]
        labels = pod["metadata"]["labels"]
        (policy,) = [
            p
            for p in policies
            if p["spec"]["policyTypes"] == ["Ingress"]
            and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert policy["spec"]["podSelector"]["matchLabels"]["cretoai.io/node"] == node
        for container in pod["spec"]["containers"]:
            for declared in container["ports"]:
                port, protocol = declared["containerPort"], declared.get("protocol", "TCP")
                admitted = _admitted(policy, port, protocol)
                assert len(admitted) == 1, (owner, port, protocol)
                (sources,) = admitted
                name = declared["name"]
                if name.startswith("metrics"):
                    assert sources == [{"namespaceSelector": {}}], (owner, name)
                elif name.startswith("grpc-"):  # consensus, transport, storage
                    own = {"app.kubernetes.io/name": "cretoai", "cretoai.io/node": node}
                    assert sources == [{"podSelector": {"matchLabels": own}}], (owner, name)
                else:  # the gateway's API, the transport's QUIC
                    assert name in {"http", "grpc", "quic"} and sources == [], (owner, name)
