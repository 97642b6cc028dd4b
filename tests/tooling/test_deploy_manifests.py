"""deploy/kubernetes (issue 13): schema-valid offline, the guard runs the flags `serve` uses, and the pieces point at
each other (Service names, ports, labels, the Guardrails config itself)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from nemo_csr_rail.cli.serve_cmd import vllm_command
from nemo_csr_rail.client import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.34.0"  # a release whose schemas kubernetes-validate bundles (no network needed)


def docs() -> list[dict]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def find(kind: str, name: str) -> dict:
    return next(d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_every_manifest_is_valid_for_kubernetes_offline():
    kv = pytest.importorskip("kubernetes_validate")
    found = docs()
    assert {d["kind"] for d in found} >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    for d in found:
        kv.validate(d, K8S_VERSION, strict=True)
    broken = {**find("Service", "csr-guard"), "spec": {"ports": [{"port": "eighty"}]}}
    with pytest.raises(kv.ValidationError):  # the validator does reject a bad manifest
        kv.validate(broken, K8S_VERSION, strict=True)


def test_guard_runs_exactly_the_command_serve_builds_on_gpu():
    c = container(find("Deployment", "csr-guard"))
    want = vllm_command(python="python3", model=DEFAULT_MODEL, device="gpu", host="0.0.0.0", port=8000)
    assert c["command"] + c["args"] == want


def test_guard_deployment_gpu_probes_replicas_and_service():
    dep = find("Deployment", "csr-guard")
    c = container(dep)
    assert dep["spec"]["replicas"] >= 2
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    port = next(p for p in c["ports"] if p["name"] == "http")["containerPort"]
    assert port == 8000
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    svc = find("Service", "csr-guard")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def guardrails_config() -> tuple[dict, str]:
    cm = find("ConfigMap", "guardrails-config")
    return yaml.safe_load(cm["data"]["config.yml"]), cm["data"]["config.py"]


def test_guardrails_server_uses_the_guard_service_with_telemetry_on():
    cfg, _ = guardrails_config()
    guard = next(m for m in cfg["models"] if m["type"] == "nemotron_csr")
    url = urlsplit(guard["parameters"]["base_url"])
    svc = find("Service", "csr-guard")
    assert (url.hostname, url.port, url.path) == (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"], "/v1")
    assert guard["model"] == DEFAULT_MODEL
    tel = cfg["custom_data"]["nemo_csr_rail"]["telemetry"]
    dep = find("Deployment", "guardrails-server")
    c = container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert tel["prometheus_host"] == "0.0.0.0" and tel["prometheus_port"] == ports["metrics"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(Path(tel["audit_log"]).parent) == mounts["audit"]
    assert c["command"][:2] == ["nemoguardrails", "server"]
    assert str(Path(mounts["config"]).parent) == c["command"][c["command"].index("--config") + 1]
    svc = find("Service", "guardrails-server")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "metrics"}


def test_prometheus_scrapes_the_pods_the_deployments_label():
    prom = yaml.safe_load(find("ConfigMap", "csr-prometheus-config")["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for job, deployment, port_name in (("csr-guard-vllm", "csr-guard", "http"),
                                       ("nemo-csr-rail", "guardrails-server", "metrics")):
        keep = {tuple(r["source_labels"]): r["regex"] for r in jobs[job]["relabel_configs"] if r.get("action") == "keep"}
        dep = find("Deployment", deployment)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == labels["app.kubernetes.io/name"]
        assert keep[("__meta_kubernetes_pod_container_port_name",)] in {p["name"] for p in container(dep)["ports"]}
        assert keep[("__meta_kubernetes_pod_container_port_name",)] == port_name


@pytest.fixture
def nemo_log_level():
    logger = logging.getLogger("nemoguardrails")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("nemo_log_level")
@pytest.mark.parametrize("quiet", [False, True], ids=["without-config.py", "with-config.py"])
async def test_the_config_loads_and_its_config_py_keeps_text_out_of_nemos_info_log(quiet, tmp_path, guard, main_llm,
                                                                                  caplog):
    """The ConfigMap's config, pointed at local stand-ins: it validates and blocks; NeMo's INFO log carries the user's
    text and the reasoning unless the ConfigMap's config.py turns NeMo's loggers down."""
    from tests.support.e2e_helpers import rails_for

    cfg, config_py = guardrails_config()
    for m in cfg["models"]:
        m["parameters"]["base_url"] = guard.url if m["type"] == "nemotron_csr" else main_llm.url
        if m["type"] == "main":
            m["model"] = main_llm.model
    cfg["custom_data"]["nemo_csr_rail"]["telemetry"] = {"audit_log": str(tmp_path / "audit.jsonl")}
    d = tmp_path / "shop"
    d.mkdir()
    (d / "config.yml").write_text(yaml.safe_dump(cfg))
    if quiet:
        (d / "config.py").write_text(config_py)
    with caplog.at_level(logging.INFO):
        rails = rails_for(d)
        res = await rails.generate_async(messages=[{"role": "user", "content": "who wins the politics debate?"}])
    assert "policy forbids" in res["content"]
    leaked = [r.getMessage() for r in caplog.records if r.name.startswith("nemoguardrails")
              and ("politics debate" in r.getMessage() or "policy forbids" in r.getMessage())]
    assert bool(leaked) is not quiet
