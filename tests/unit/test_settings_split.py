"""Settings in one place (issue 18): every default written once in ``options``, the settings package split by job
with its old names intact, the implicit-policy rule stated once, and per-endpoint ``verify_tls`` held to the same
rule as ``tls:``."""

from __future__ import annotations

import inspect
import io
import textwrap
import tokenize
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import nemo_csr_rail
from nemo_csr_rail import options
from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.options import DecodeOptions, HttpOptions
from nemo_csr_rail.settings import (
    BreakerSettings,
    CacheSettings,
    LongInputSettings,
    PluginSettings,
    TelemetrySettings,
    implicit_policy,
    parse_plugin_settings,
    resolve,
)

PKG = Path(nemo_csr_rail.__file__).resolve().parent
POLICIES = {"retail": {"policy": "No politics."}}

# Every public name `nemo_csr_rail.settings` offered as a single module, before the split.
OLD_PUBLIC_NAMES = (
    "BARE_OUTPUT_RE", "BreakerSettings", "CacheSettings", "CategorySpec", "DEFAULT_ERROR_REFUSAL",
    "DEFAULT_HISTORY_TURNS", "DEFAULT_INPUT_REFUSAL", "DEFAULT_MODEL_TYPE", "DEFAULT_OUTPUT_REFUSAL",
    "DirectionalReasoning", "EmbeddedSettings", "Endpoint", "FLOW_POLICY_RE", "LongInputSettings", "OnError",
    "POLICY_KINDS", "PluginSettings", "PolicySettings", "REFUSAL_FIELDS", "ResolvedSettings", "SECTION",
    "TELEMETRY_EXTRA_MODULES", "TelemetrySettings", "TlsSettings", "check_template", "parse_plugin_settings",
    "referenced_policies", "resolve", "uses_unnamed_output_check",
)


# --- the package keeps its names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OLD_PUBLIC_NAMES)
def test_every_old_name_still_imports_from_settings(name: str) -> None:
    import nemo_csr_rail.settings as settings

    assert hasattr(settings, name)
    assert name in settings.__all__


def test_the_split_modules_hold_what_the_package_re_exports() -> None:
    import sys

    import nemo_csr_rail.settings as settings
    from nemo_csr_rail.settings import endpoints, flows, schema

    resolve_module = sys.modules["nemo_csr_rail.settings.resolve"]  # the attribute is the function of that name
    assert settings.PluginSettings is schema.PluginSettings
    assert settings.Endpoint is endpoints.Endpoint
    assert settings.referenced_policies is flows.referenced_policies
    assert settings.resolve is resolve_module.resolve
    assert settings.ResolvedSettings is resolve_module.ResolvedSettings


def test_old_import_sites_still_work() -> None:
    from nemo_csr_rail.client import DEFAULT_BASE_URL, DEFAULT_MODEL
    from nemo_csr_rail.policy import implicit_policy as from_policy
    from nemo_csr_rail.weights import DEFAULT_REPO

    assert DEFAULT_BASE_URL == options.DEFAULT_BASE_URL == "http://127.0.0.1:8000/v1"
    assert DEFAULT_MODEL == DEFAULT_REPO == options.DEFAULT_MODEL == "nvidia/Nemotron-Content-Safety-Reasoning-4B"
    assert from_policy is implicit_policy


def test_options_is_a_leaf() -> None:
    import ast

    tree = ast.parse((PKG / "options.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith("nemo_csr_rail")} - {"nemo_csr_rail.errors"}


# --- every default once ------------------------------------------------------------------------------------------


def test_schema_defaults_are_the_options() -> None:
    s = PluginSettings(policies=POLICIES)
    assert s.decode_options() == DecodeOptions()
    assert s.http_options() == HttpOptions()
    assert s.timeout_s == HttpOptions.timeout_s == 5.0
    assert s.max_retries == HttpOptions.max_retries == 2
    assert s.max_concurrency == HttpOptions.max_concurrency == 256
    assert s.reasoning_max_tokens == DecodeOptions.reasoning_max_tokens == 384
    assert s.http_transport == HttpOptions.transport == "buffered"
    assert s.model == options.DEFAULT_MODEL_TYPE == "nemotron_csr"
    assert s.engine == options.DEFAULT_ENGINE and s.on_error == options.DEFAULT_ON_ERROR == "block"
    assert s.error_refusal == options.DEFAULT_ERROR_REFUSAL
    assert BreakerSettings() == BreakerSettings(threshold=HttpOptions.breaker_threshold,
                                                cooldown_s=HttpOptions.breaker_cooldown_s)
    assert CacheSettings().maxsize == options.DEFAULT_CACHE_MAXSIZE
    assert CacheSettings().ttl_s == options.DEFAULT_CACHE_TTL_S
    li = LongInputSettings()
    assert (li.strategy, li.max_chars, li.window_chars, li.max_windows, li.max_judged_chars, li.max_in_flight) == (
        options.DEFAULT_LONG_INPUT_STRATEGY, options.DEFAULT_LONG_INPUT_MAX_CHARS,
        options.DEFAULT_LONG_INPUT_WINDOW_CHARS, None, options.DEFAULT_LONG_INPUT_MAX_JUDGED_CHARS,
        options.DEFAULT_LONG_INPUT_MAX_IN_FLIGHT)
    assert TelemetrySettings.model_fields["prometheus_host"].default == options.DEFAULT_PROMETHEUS_HOST


def _defaults(fn: Any) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_code_defaults_are_the_options() -> None:
    from nemo_csr_rail import plans
    from nemo_csr_rail.cache import TTLCache
    from nemo_csr_rail.client import CsrClient
    from nemo_csr_rail.engines.http import VllmHttpEngine
    from nemo_csr_rail.plans import split_output
    from nemo_csr_rail.policy import Policy

    d, h = DecodeOptions(), HttpOptions()
    client = CsrClient()
    assert client.decode == d and client.http == h and client.timeout_s == h.timeout_s
    defaults = _defaults(CsrClient.__init__)
    assert defaults["base_url"] == options.DEFAULT_BASE_URL and defaults["model"] == options.DEFAULT_MODEL
    assert VllmHttpEngine(["http://127.0.0.1:9/v1"], "m").options == h
    assert _defaults(plans.build)["decode"] == d
    assert _defaults(split_output.response_step)["logprobs"] == d.logprobs
    assert _defaults(TTLCache.__init__) == {"maxsize": options.DEFAULT_CACHE_MAXSIZE,
                                             "ttl_s": options.DEFAULT_CACHE_TTL_S}
    assert Policy.custom("p", "x").model_type == options.DEFAULT_MODEL_TYPE
    assert Policy.custom("p", "x").on_error == options.DEFAULT_ON_ERROR
    assert _defaults(Policy.topic)["history_turns"] == options.DEFAULT_HISTORY_TURNS


def _code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """Numbers and strings of the code, docstrings and comments left out."""
    toks = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    out = []
    for i, t in enumerate(toks):
        if t.type == tokenize.NUMBER:
            out.append(t)
        elif t.type == tokenize.STRING:
            before = next((p for p in reversed(toks[:i]) if p.type not in (tokenize.NL, tokenize.NEWLINE,
                                                                             tokenize.INDENT, tokenize.DEDENT)), None)
            if before is not None and before.type == tokenize.OP and before.string in ("=", "(", ",", "[", ":"):
                out.append(t)  # a value, not a docstring
    return out


def _files(name: str) -> list[Path]:
    """Package files called ``name``, found by name wherever the refactoring puts them."""
    paths = sorted(PKG.rglob(name))
    assert paths, name
    return paths


@pytest.mark.parametrize("name", ["client.py", "http.py", "prompt.py"])
def test_no_copied_default_literals(name: str) -> None:
    for path in _files(name):
        numbers = {t.string for t in _code_tokens(path) if t.type == tokenize.NUMBER}
        assert not numbers & {"384", "256"}, f"{path}: a default copied from nemo_csr_rail/options.py"
        strings = {t.string.strip("'\"") for t in _code_tokens(path) if t.type == tokenize.STRING}
        assert not strings & {options.DEFAULT_BASE_URL, options.DEFAULT_MODEL}, path


@pytest.mark.parametrize("name", ["http.py", "embedded.py"])
def test_top_logprobs_is_not_copied(name: str) -> None:
    for path in _files(name):
        assert "TOP_LOGPROBS = 5" not in path.read_text(), path


def test_the_reasoning_budget_is_written_once_in_the_package() -> None:
    holders = [p.relative_to(PKG).as_posix() for p in sorted(PKG.rglob("*.py"))
               if any(t.string == "384" for t in _code_tokens(p))]
    assert holders == ["options.py"]


# --- options from a config ---------------------------------------------------------------------------------------


def test_decode_and_http_options_reflect_the_config() -> None:
    s = parse_plugin_settings({
        "policies": POLICIES, "structured_output": False, "assistant_prefill": False, "logprobs": False,
        "reasoning_max_tokens": 128, "split_output": False, "timeout_s": 1.5, "max_retries": 0,
        "max_concurrency": 7, "breaker": {"threshold": 9, "cooldown_s": 0.25}, "http_transport": "httpx",
    })
    assert s.decode_options() == DecodeOptions(structured_output=False, assistant_prefill=False, logprobs=False,
                                               reasoning_max_tokens=128, split_output=False)
    assert s.http_options() == HttpOptions(timeout_s=1.5, max_retries=0, max_concurrency=7, breaker_threshold=9,
                                           breaker_cooldown_s=0.25, transport="httpx")


def test_options_are_frozen() -> None:
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        HttpOptions().timeout_s = 1.0  # type: ignore[misc]


# --- the implicit policy: one rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["retail"], "retail"),
        (["default"], "default"),
        (["retail", "default"], "default"),
        (["default", "retail", "hr"], "default"),
        (["retail", "hr"], None),
        ([], None),
    ],
)
def test_implicit_policy_rule(names: list[str], expected: str | None) -> None:
    assert implicit_policy(names) == expected
    assert implicit_policy(iter(names)) == expected
    assert implicit_policy(dict.fromkeys(names)) == expected
    if names:
        plugin = PluginSettings(policies={n: {"policy": "x"} for n in names})
        assert plugin.implicit_policy() == expected


def _rails(plugin: dict[str, Any], *, input_flows: list[str] = (), output_flows: list[str] = (),
           params: dict[str, Any] | None = None) -> Any:
    """A stand-in RailsConfig: what resolve() and doctor read of one, nothing from disk."""
    guard = {"type": "nemotron_csr", "engine": "vllm_openai", "model": options.DEFAULT_MODEL,
             "parameters": {"base_url": "https://guard.example:8000/v1", **(params or {})}}
    rails = SimpleNamespace(input=SimpleNamespace(flows=list(input_flows)),
                            output=SimpleNamespace(flows=list(output_flows)))
    return SimpleNamespace(custom_data={"nemo_csr_rail": plugin}, models=[guard], rails=rails, config_path=None)


def test_resolve_uses_the_rule_for_an_unnamed_output_check() -> None:
    topic = {"topic": "Only talk about orders."}
    # 'default' is a topic policy and an unnamed output check would use it
    with pytest.raises(ConfigError) as exc:
        resolve(_rails({"policies": {"retail": {"policy": "x"}, "default": topic}}, output_flows=["csr check output"]))
    assert exc.value.key == "policies.default"
    # two policies, neither 'default': no implicit policy, nothing to reject here
    resolve(_rails({"policies": {"retail": {"policy": "x"}, "orders": topic}}, output_flows=["csr check output"]))


@pytest.mark.parametrize(
    ("names", "expected"),
    [(["retail"], "retail"), (["retail", "default"], "default"), (["retail", "hr"], None)],
)
def test_doctor_probes_the_implicit_policy(names: list[str], expected: str | None) -> None:
    from nemo_csr_rail.cli.doctor_cmd import modes
    from nemo_csr_rail.policy import compile_policies

    plugin = PluginSettings(policies={n: {"policy": "x"} for n in names})
    cfg = _rails({}, input_flows=["csr check input"], output_flows=["csr check output"])
    got = modes(None, cfg, compile_policies(plugin))
    if expected is None:  # nothing named, no implicit policy: every policy probed as input
        assert sorted(n for n, d, _ in got) == sorted(names) and {d for _, d, _ in got} == {"input"}
    else:
        assert [(n, d) for n, d, _ in got] == [(expected, "input"), (expected, "output")]


# --- parameters.verify_tls ---------------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def _verify(params: dict[str, Any], tls: dict[str, Any] | None = None) -> bool | str:
    plugin: dict[str, Any] = {"policies": POLICIES}
    if tls is not None:
        plugin["tls"] = tls
    return resolve(_rails(plugin, params=params)).endpoints["nemotron_csr"].verify


def test_verify_tls_false_with_a_parameters_ca_bundle_fails(bundle: str) -> None:
    with pytest.raises(ConfigError, match=r"models\[type=nemotron_csr\]: parameters\.verify_tls is false but "
                                          r"parameters\.ca_bundle is set"):
        _verify({"verify_tls": False, "ca_bundle": bundle})


def test_verify_tls_false_with_the_plugin_tls_ca_bundle_fails(bundle: str) -> None:
    with pytest.raises(ConfigError, match=r"parameters\.verify_tls is false but "
                                          r"custom_data\.nemo_csr_rail\.tls\.ca_bundle is set"):
        _verify({"verify_tls": False}, tls={"ca_bundle": bundle})


@pytest.mark.parametrize("value", ["false", "no", 0, 1, None, "/etc/ssl/ca.pem"])
def test_a_non_bool_verify_tls_fails_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"parameters\.verify_tls must be true or false"):
        _verify({"verify_tls": value})


@pytest.mark.parametrize("value", [123, ["/etc/ssl/ca.pem"]])
def test_a_non_path_ca_bundle_fails_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"parameters\.ca_bundle must be the path"):
        _verify({"ca_bundle": value})


def test_a_missing_parameters_ca_bundle_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a readable file"):
        _verify({"ca_bundle": str(tmp_path / "nope.pem")})


def test_consistent_tls_settings_resolve(bundle: str, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_text("x")
    assert _verify({}) is True
    assert _verify({"verify_tls": False}) is False
    assert _verify({"verify_tls": True}) is True
    assert _verify({"verify_tls": True, "ca_bundle": bundle}) == bundle
    assert _verify({"ca_bundle": bundle}) == bundle
    assert _verify({}, tls={"ca_bundle": bundle}) == bundle
    assert _verify({}, tls={"verify": False}) is False
    # the endpoint's own keys take precedence over the tls section, as before
    assert _verify({"ca_bundle": bundle}, tls={"verify": False}) == bundle
    assert _verify({"ca_bundle": bundle}, tls={"ca_bundle": str(other)}) == bundle
    assert _verify({"verify_tls": True}, tls={"verify": False}) is True
    assert _verify({"verify_tls": True}, tls={"ca_bundle": str(other)}) is True


def test_configs_differing_only_in_endpoint_tls_do_not_share_a_fingerprint(bundle: str) -> None:
    plain = resolve(_rails({"policies": POLICIES}))
    off = resolve(_rails({"policies": POLICIES}, params={"verify_tls": False}))
    pinned = resolve(_rails({"policies": POLICIES}, params={"ca_bundle": bundle}))
    assert len({plain.fingerprint, off.fingerprint, pinned.fingerprint}) == 3
    assert resolve(_rails({"policies": POLICIES})).fingerprint == plain.fingerprint


def test_verify_tls_conflict_fails_when_a_real_config_loads(tmp_path: Path, bundle: str) -> None:
    from nemoguardrails import RailsConfig

    (tmp_path / "config.yml").write_text(textwrap.dedent(f"""\
        import_paths: [nemo_csr_rail]
        models:
          - type: main
            engine: openai
            model: m
            parameters: {{base_url: 'http://127.0.0.1:9/v1', api_key: x}}
          - type: nemotron_csr
            engine: vllm_openai
            model: {options.DEFAULT_MODEL}
            parameters: {{base_url: 'https://127.0.0.1:9/v1', verify_tls: false, ca_bundle: '{bundle}'}}
        custom_data:
          nemo_csr_rail:
            policies:
              retail: {{policy: "No politics."}}
        rails:
          input: {{flows: ['csr check input $policy="retail"']}}
        """))
    with pytest.raises(ConfigError, match=r"parameters\.verify_tls is false"):
        resolve(RailsConfig.from_path(str(tmp_path)))


def test_settings_reach_the_client_and_engine_as_objects() -> None:
    """A config's decode and HTTP settings travel as the two option objects, not as a list of keywords."""
    from nemo_csr_rail.client import CsrClient
    from nemo_csr_rail.engines.http import VllmHttpEngine

    s = PluginSettings.model_validate({"timeout_s": 1.5, "max_retries": 0, "split_output": False,
                                       "breaker": {"threshold": 7}, "policies": {"p": {"policy": "x"}}})
    engine = VllmHttpEngine(["http://127.0.0.1:9/v1"], "m", options=s.http_options())
    client = CsrClient.from_settings(s, engine)
    assert client.decode == s.decode_options() and client.http == s.http_options()
    assert engine.options.breaker_threshold == 7 and engine.replicas.max_retries == 0
    assert CsrClient(timeout_s=2, split_output=False).decode.split_output is False  # single keywords still work
    with pytest.raises(TypeError, match="split_ouput"):
        CsrClient(split_ouput=False)
