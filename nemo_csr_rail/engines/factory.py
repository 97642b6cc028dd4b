"""Which engine a guard model resolves to, built with the plugin's settings, in one place.

The rails, ``check``, ``eval`` and ``doctor`` all go through here, so a setting (retries, concurrency, TLS, circuit
breaker, embedded device) applies the same way whichever entry point runs the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from nemo_csr_rail.completion import Engine
from nemo_csr_rail.plans import grammar
from nemo_csr_rail.policy import compile_policies
from nemo_csr_rail.settings import ResolvedSettings


def build_engine(resolved: ResolvedSettings, model_type: str, *, base_urls: Sequence[str] | None = None,
                 max_concurrency: int | None = None) -> Engine:
    """The embedded engine when the config selects it for this model (and no URL overrides it), else vLLM over HTTP
    at the model's ``base_url(s)`` or at ``base_urls``."""
    s = resolved.plugin
    if not base_urls and s.engine == "embedded" and model_type == s.model:
        from nemo_csr_rail.engines.embedded import EmbeddedEngine

        ep = resolved.endpoints.get(model_type)
        return EmbeddedEngine(s.embedded.model_path or (ep.model if ep else ""), device=s.embedded.device,
                              dtype=s.embedded.dtype)
    from nemo_csr_rail.engines.http import VllmHttpEngine

    ep = resolved.endpoints[model_type]
    urls = tuple(u.rstrip("/") for u in base_urls) if base_urls else ep.base_urls
    reasoned = s.structured_output and any(p.uses_reasoning() for p in compile_policies(s).values()
                                           if p.model_type == model_type)
    http = s.http_options()
    if max_concurrency:
        http = replace(http, max_concurrency=max_concurrency)
    return VllmHttpEngine(urls, ep.model, api_key=ep.api_key, verify=ep.verify, options=http,
                          top_logprobs=s.decode_options().top_logprobs,
                          warm_regexes=grammar.warm_up_regexes() if reasoned else ())
