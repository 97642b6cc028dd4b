"""Reading the plugin's Prometheus endpoint over a real socket, as Prometheus would."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1") -> str:
    resp = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in an exposition text (None when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def metrics_endpoint():
    """Stops this process's /metrics endpoint after the test (it is process-wide: the first port asked wins)."""
    from nemo_csr_rail.telemetry import metrics

    metrics.stop_endpoint()
    yield
    metrics.stop_endpoint()


def value(name: str, **labels: str) -> float:
    """A series' current value in this process (0 when absent): the baseline for series keyed by a replica URL,
    whose port an earlier test's server may have had."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0
