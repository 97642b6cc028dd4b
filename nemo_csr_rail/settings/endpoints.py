"""The guard endpoints: a ``models:`` entry of config.yml turned into where and how to reach the guard model.

Separate from the schema because these values come from NeMo Guardrails' own ``models:`` list, not from the plugin
section, and depend on the process (API keys are read from the environment, CA bundles from disk). Everything that
can be wrong with an endpoint (no URL, a malformed one, an unset key variable, an unreadable CA bundle, TLS
verification both off and given a bundle) fails here, when the config loads, rather than on the first check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.options import DEFAULT_BASE_URL
from nemo_csr_rail.settings.schema import SECTION, TlsSettings

_UNSET = object()


@dataclass(frozen=True)
class Endpoint:
    """Where one guard model is served. ``api_key`` is resolved from the environment, never logged."""

    model_type: str
    model: str
    base_urls: tuple[str, ...]
    api_key: str | None = None
    verify: bool | str = True

    def __repr__(self) -> str:
        return f"Endpoint(model_type={self.model_type!r}, model={self.model!r}, base_urls={self.base_urls!r})"


def _model_entries(models: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in models or ():
        out.setdefault(getattr(m, "type", None) or m.get("type"), m)
    return out


def _check_url(model_type: str, url: Any) -> str:
    from urllib.parse import urlsplit

    text = str(url).strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url {text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url {text!r} must be an http(s) URL "
                              f"with a host, e.g. {DEFAULT_BASE_URL}")
    return text


def _tls_verify(model_type: str, params: Mapping[str, Any], tls: TlsSettings) -> bool | str:
    """httpx's ``verify`` for one endpoint: its ``parameters.ca_bundle`` / ``parameters.verify_tls`` if given, else
    the plugin's ``tls`` section. The same rule as ``tls:``: verification off together with a CA bundle is a
    contradiction and fails, naming the keys (docs/configuration-notes.md)."""
    where = f"models[type={model_type}]"
    bundle = params.get("ca_bundle")
    if bundle and isinstance(bundle, os.PathLike):
        bundle = os.fspath(bundle)
    if bundle and not isinstance(bundle, str):
        raise ConfigError("", f"{where}: parameters.ca_bundle must be the path of a CA bundle file, "
                              f"got {type(bundle).__name__}")
    verify_tls = params.get("verify_tls", _UNSET)
    if verify_tls is not _UNSET and not isinstance(verify_tls, bool):
        raise ConfigError("", f"{where}: parameters.verify_tls must be true or false, got {verify_tls!r}")
    if verify_tls is False:
        if bundle:
            raise ConfigError("", f"{where}: parameters.verify_tls is false but parameters.ca_bundle is set; "
                                  "drop one of them")
        if tls.ca_bundle is not None:
            raise ConfigError("", f"{where}: parameters.verify_tls is false but custom_data.{SECTION}.tls.ca_bundle "
                                  "is set; drop one of them")
        return False
    if bundle:
        path = os.path.expanduser(bundle)  # ssl does not expand "~"
        if not Path(path).is_file():
            raise ConfigError("", f"{where}: CA bundle {bundle!r} is not a readable file")
        return path
    if verify_tls is True:
        return True
    return tls.ca_bundle or tls.verify


def _endpoint_from_model(model_type: str, entry: Any, tls: TlsSettings | None = None) -> Endpoint:
    get = (lambda k: getattr(entry, k, None)) if not isinstance(entry, Mapping) else entry.get
    params = dict(get("parameters") or {})
    urls = params.get("base_urls") or params.get("base_url")
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url is required (the vLLM server's /v1 URL)")
    env_var = get("api_key_env_var") or params.get("api_key_env_var")
    api_key = os.environ.get(env_var) if env_var else params.get("api_key")
    if env_var and api_key is None:
        raise ConfigError("", f"models[type={model_type}]: api_key_env_var {env_var!r} is not set in the environment")
    if not env_var and api_key:
        logging.getLogger("nemo_csr_rail").warning(
            "models[type=%s]: parameters.api_key is written in the config; prefer api_key_env_var "
            "(the key itself is never logged)", model_type)
    verify = _tls_verify(model_type, params, tls or TlsSettings())
    return Endpoint(
        model_type=model_type,
        model=str(get("model") or ""),
        base_urls=tuple(_check_url(model_type, u) for u in urls),
        api_key=api_key,
        verify=verify,
    )
