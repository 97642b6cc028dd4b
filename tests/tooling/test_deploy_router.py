"""deploy/kubernetes/guard-router.yaml: vllm-router (cache_aware) in front of the guard pods. Schema-valid offline,
and the pieces point at each other: the router discovers exactly the guard Deployment's pods on their port, with
the RBAC that needs, the guard pods serve what cache_aware asks for, and the router's own CLI accepts the args."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.34.0"  # as tests/tooling/test_deploy_manifests.py: a release kubernetes-validate bundles
ROUTER_PYTHON = Path(os.environ.get("CSR_VLLM_ROUTER_PYTHON")
                     or Path.home() / ".cache" / "nemo-csr-rail" / "router-venv" / "bin" / "python")


def router_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "guard-router.yaml").read_text()) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def guard_deployment() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "guard-vllm.yaml").read_text()) if d]
    return find(docs, "Deployment", "csr-guard")


def router_container() -> dict:
    (c,) = find(router_docs(), "Deployment", "csr-guard-router")["spec"]["template"]["spec"]["containers"]
    return c


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_router_manifests_are_valid_for_kubernetes_offline():
    kv = pytest.importorskip("kubernetes_validate")
    docs = router_docs()
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                                         "PodDisruptionBudget"}
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)


def test_the_router_discovers_exactly_the_guard_pods_on_their_port():
    args = router_container()["args"]
    assert arg(args, "--policy") == "cache_aware" and "--service-discovery" in args
    key, value = arg(args, "--selector").split("=")
    guard = guard_deployment()
    assert guard["spec"]["template"]["metadata"]["labels"][key] == value
    assert guard["spec"]["selector"]["matchLabels"] == {key: value}
    (gc,) = guard["spec"]["template"]["spec"]["containers"]
    assert int(arg(args, "--service-discovery-port")) == next(p["containerPort"] for p in gc["ports"]
                                                               if p["name"] == "http")
    # the namespace the router watches is its own (the Role below is namespaced)
    assert arg(args, "--service-discovery-namespace") == "$(POD_NAMESPACE)"
    env = {e["name"]: e for e in router_container()["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_the_guard_pods_serve_what_cache_aware_asks_for():
    (gc,) = guard_deployment()["spec"]["template"]["spec"]["containers"]
    assert "--enable-scale-out" in gc["args"]  # vLLM 0.32: /v1/chat/completions/render answers 403 without it


def test_the_router_may_watch_pods_and_nothing_else():
    docs = router_docs()
    dep = find(docs, "Deployment", "csr-guard-router")
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    assert find(docs, "ServiceAccount", sa)
    role = find(docs, "Role", "csr-guard-router")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = find(docs, "RoleBinding", "csr-guard-router")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}


def test_the_router_service_and_probes_point_at_its_pods():
    docs = router_docs()
    dep = find(docs, "Deployment", "csr-guard-router")
    svc = find(docs, "Service", "csr-guard-router")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    c = router_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(arg(c["args"], "--port"))
    assert ports["metrics"] == int(arg(c["args"], "--prometheus-port"))
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http", "metrics"}
    assert c["readinessProbe"]["httpGet"]["port"] == c["livenessProbe"]["httpGet"]["port"] == "http"
    pdb = find(docs, "PodDisruptionBudget", "csr-guard-router")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_the_routers_own_cli_accepts_the_args():
    """vllm-router 0.1.17's argument parser (its venv: CSR_VLLM_ROUTER_PYTHON or the benchmark's default, which
    .ci/install_router.sh makes). Skipped without one; with CSR_REQUIRE_ROUTER=1 (tools/test.sh, CI) a failure."""
    if not ROUTER_PYTHON.exists():
        why = f"no vllm-router venv at {ROUTER_PYTHON} (.ci/install_router.sh makes one and prints its python)"
        if os.environ.get("CSR_REQUIRE_ROUTER") == "1":
            pytest.fail(f"CSR_REQUIRE_ROUTER=1 but {why}", pytrace=False)
        pytest.skip(why)
    code = ("import json, sys\nfrom vllm_router.launch_router import parse_router_args\n"
            "a = parse_router_args(sys.argv[1:])\n"
            "print(json.dumps({k: getattr(a, k) for k in ('policy', 'service_discovery', 'selector', "
            "'service_discovery_port', 'service_discovery_namespace', 'port', 'prometheus_port', 'cache_threshold', "
            "'balance_abs_threshold', 'balance_rel_threshold')}))")
    out = subprocess.run([str(ROUTER_PYTHON), "-c", code, *router_container()["args"]], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["policy"] == "cache_aware" and got["service_discovery"] is True
    assert got["selector"] == {"app.kubernetes.io/name": "csr-guard"}
    assert (got["service_discovery_port"], got["port"], got["prometheus_port"]) == (8000, 8000, 29000)
    assert (got["cache_threshold"], got["balance_abs_threshold"], got["balance_rel_threshold"]) == (0.3, 64, 1.5)
