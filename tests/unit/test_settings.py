"""Bad configuration fails when the config loads, naming the offending key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from nemoguardrails import LLMRails, RailsConfig

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.settings import resolve

GUARD = ("  - {type: nemotron_csr, engine: vllm_openai, model: nvidia/Nemotron-Content-Safety-Reasoning-4B, "
         "parameters: {base_url: 'http://127.0.0.1:9/v1'}}\n")
MAIN = "  - {type: main, engine: openai, model: m, parameters: {base_url: 'http://127.0.0.1:9/v1', api_key: x}}\n"


def _config(tmp_path: Path, body: str, models: str = MAIN + GUARD) -> RailsConfig:
    (tmp_path / "config.yml").write_text("import_paths: [nemo_csr_rail]\nmodels:\n" + models + textwrap.dedent(body))
    return RailsConfig.from_path(str(tmp_path))


GOOD = """
custom_data:
  nemo_csr_rail:
    policies:
      retail: {policy: "No politics."}
rails:
  input: {flows: ['csr check input $policy="retail"']}
"""


def test_good_config_resolves(tmp_path: Path) -> None:
    r = resolve(_config(tmp_path, GOOD))
    assert r.endpoints["nemotron_csr"].base_urls == ("http://127.0.0.1:9/v1",)
    assert r.plugin.on_error == "block" and r.plugin.timeout_s == 5


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (GOOD.replace("policies:", "timeout: 3\n    policies:"), "timeout", "unknown key"),
        (GOOD.replace('{policy: "No politics."}', '{policy: "x", reasonning: true}'), "policies.retail.reasonning",
         "unknown key"),
        (GOOD.replace('{policy: "No politics."}', "{refusal: hi}"), "policies.retail", "needs one of"),
        (GOOD.replace('{policy: "No politics."}', "{policy: x, taxonomy: nemotron_v2}"), "policies.retail",
         "exactly one"),
        (GOOD.replace('{policy: "No politics."}', "{taxonomy: nemotron_v9}"), "policies.retail.taxonomy",
         "unknown taxonomy"),
        (GOOD.replace('{policy: "No politics."}', '{policy: x, refusal: "no {reason}"}'), "policies.retail",
         "placeholder"),
        (GOOD.replace('$policy="retail"', '$policy="retial"'), "policies.retial", "unknown policy"),
        (GOOD.replace("policies:", "on_error: maybe\n    policies:"), "on_error", "block"),
        (GOOD.replace("policies:", "timeout_s: 0\n    policies:"), "timeout_s", "greater than 0"),
        (GOOD.replace("policies:", "http_transport: anyio\n    policies:"), "http_transport", "'buffered' or 'httpx'"),
        ("custom_data: {}\n", "", "missing"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(_config(tmp_path, body))
    assert exc.value.key == key
    assert words in str(exc.value)


def test_missing_guard_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no guard model of type 'nemotron_csr'"):
        resolve(_config(tmp_path, GOOD, models=MAIN))


def test_missing_api_key_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSR_KEY_FOR_TEST", raising=False)
    guard = GUARD.replace("engine: vllm_openai,", "engine: vllm_openai, api_key_env_var: CSR_KEY_FOR_TEST,")
    with pytest.raises(ValueError, match="CSR_KEY_FOR_TEST"):  # NeMo Guardrails itself rejects it at load
        resolve(_config(tmp_path, GOOD, models=MAIN + guard))
    monkeypatch.setenv("CSR_KEY_FOR_TEST", "s3cret")
    ep = resolve(_config(tmp_path, GOOD, models=MAIN + guard)).endpoints["nemotron_csr"]
    assert ep.api_key == "s3cret" and "s3cret" not in repr(ep)


def test_colang2_co_files_are_scanned_for_policy_names(tmp_path: Path) -> None:
    (tmp_path / "main.co").write_text('import nemo_csr_rail\nflow input rails $input_text\n  csr check input $policy="nope"\n')
    body = GOOD.split("rails:")[0]
    with pytest.raises(ConfigError) as exc:
        resolve(_config(tmp_path, 'colang_version: "2.x"\n' + body))
    assert exc.value.key == "policies.nope"


def test_llmrails_construction_fails_at_load_time(tmp_path: Path) -> None:
    """The package's config.py init(app) validates when LLMRails is built, before any turn."""
    cfg = _config(tmp_path, GOOD.replace('{policy: "No politics."}', "{policy: x, bogus: 1}"))
    with pytest.raises(RuntimeError, match="nemo_csr_rail") as exc:  # NeMo wraps init() errors
        LLMRails(cfg)
    assert isinstance(exc.value.__cause__, ConfigError)
    assert "policies.retail.bogus: unknown key" in str(exc.value.__cause__)
