"""On the real vLLM server: the reduced decoding plans return the verdict of the full generation for the same prompt.

Uses the session's real vLLM server (``CSR_VLLM_PYTHON``, see tests/e2e/real/conftest.py) serving the tiny random Gemma-3. Random
weights make every verdict arbitrary, which is what this needs: agreement cannot come from a model that always says
the same thing, and both prompt verdicts occur, so both the kept guess and the re-asked response step are exercised.

1. Token-exact: the full two-line generation (prefill ``Prompt harm:``, the two-line grammar) versus prefilling the
   model's *own* generated tokens up to ``Response harm:`` and decoding only the response verdict (``/v1/completions``
   with token ids). Same tokens in the context, so the split must give the same verdict (numerics permitting).
2. The plugin's split output check (text prefill ``Prompt harm: X\nResponse harm:``, tokenized canonically by the
   server) versus the full generation. A random model often spells the forced text in odd pieces (``'Re','s',
   'po'…``), so the contexts then differ; a trained model writes its format in the tokenizer's canonical pieces. The
   test asserts agreement where the model's forced tokens are the canonical ones, and reports the rest.
3. The stop string only removes the ``<eos>`` decode step from an input check.
"""

from __future__ import annotations

import json

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail import prompt as prompts
from nemo_csr_rail import verdict as verdicts
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.engines.http import VllmHttpEngine
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import Direction, Policy
from tests.support.standin import GUARD_MODEL

pytestmark = pytest.mark.vllm

USERS = ["How do I bake bread?", "tell me a joke", "What is the capital of France?", "Write a poem about rain.",
         "How can I pick a lock?", "Summarise the news for me.", "Help me plan a trip to Rome.",
         "What's a good name for a cat?", "Explain quantum computing simply.", "Can you recommend a book?"]
BOTS = ["Sure, here you go.", "I can't help with that.", "Paris.", "Rain falls softly on the roof.",
        "Use a tension wrench and a pick.", "Here is a short summary.", "Day one: the Colosseum.", "Whiskers.",
        "Qubits can be 0 and 1 at once.", "Try 'The Hobbit'."]
POLICIES = [Policy.taxonomy("safety"), Policy.custom("retail", "Only talk about orders and returns.", reasoning=False)]


@pytest.fixture(scope="module")
def vllm_url(vllm):
    """The session's real vLLM server (tests/e2e/real/conftest.py)."""
    return vllm.url


def _full(client: httpx.Client, url: str, gp: prompts.GuardPrompt) -> tuple[verdicts.Verdict, int]:
    body = VllmHttpEngine([url], GUARD_MODEL).payload(gp)
    body.pop("stop", None)
    body.pop("include_stop_str_in_output", None)
    data = client.post(url + "/chat/completions", json=body, timeout=120).json()
    text = data["choices"][0]["message"]["content"]
    return verdicts.parse(gp.prefill + text), data["usage"]["completion_tokens"]


def _root(url: str) -> str:
    return url[: -len("/v1")]


def _chat_ids(client: httpx.Client, url: str, messages: list[dict[str, str]]) -> list[int]:
    r = client.post(_root(url) + "/tokenize", json={"model": GUARD_MODEL, "messages": messages,
                                                     "continue_final_message": True, "add_generation_prompt": False})
    r.raise_for_status()
    return r.json()["tokens"]


def _complete_ids(client: httpx.Client, url: str, ids: list[int], regex: str) -> tuple[str, list[int], list[str]]:
    r = client.post(url + "/completions", timeout=120, json={
        "model": GUARD_MODEL, "prompt": ids, "max_tokens": 64, "temperature": 0.0, "logprobs": 0,
        "return_tokens_as_token_ids": True, "structured_outputs": {"regex": regex}})
    r.raise_for_status()
    choice = r.json()["choices"][0]
    gen_ids = [int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"]]
    pieces = [client.post(_root(url) + "/detokenize", json={"model": GUARD_MODEL, "tokens": [t]}).json()["prompt"]
              for t in gen_ids]
    return choice["text"], gen_ids, pieces


TWO_LINES = " (harmful|unharmful)\nResponse harm: (harmful|unharmful)"
VALUE = " (harmful|unharmful)"


def _cases():
    for pol in POLICIES:
        for user, bot in zip(USERS, BOTS, strict=True):
            yield pol, user, bot


def test_prefilling_the_forced_tokens_equals_decoding_them(vllm_url):
    """Token-exact form of the split: same context tokens, response verdict decoded in a second request."""
    compared = 0
    with httpx.Client(timeout=120) as client:
        for pol, user, bot in _cases():
            gp = plans.build(pol, Direction.OUTPUT, user, bot)
            ids = _chat_ids(client, vllm_url, gp.messages)
            text, gen, pieces = _complete_ids(client, vllm_url, ids, TWO_LINES)
            full = verdicts.parse(gp.prefill + text)
            # the prompt half of the split decodes the first value alone: same context, same greedy tokens
            head, _, _ = _complete_ids(client, vllm_url, ids, VALUE)
            assert verdicts.parse(gp.prefill + head).prompt_harm == full.prompt_harm
            # cut after the model's own tokens that complete "Response harm:"
            acc, cut = "", None
            for k, piece in enumerate(pieces):
                acc += piece
                if acc.endswith("Response harm:"):
                    cut = k + 1
                    break
            if cut is None:  # the forced ':' and the value's space fused into one token: no clean cut
                continue
            tail, _, _ = _complete_ids(client, vllm_url, ids + gen[:cut], VALUE)
            assert verdicts.parse("Response harm:" + tail).response_harm == full.response_harm, (user, text, tail)
            compared += 1
    print(f"token-exact split vs full generation: {compared} of {len(USERS) * len(POLICIES)} compared, all equal")
    assert compared >= len(USERS)


async def test_split_output_check_equals_full_generation(vllm_url):
    rows = []
    async with CsrClient(vllm_url, timeout_s=120) as guard:
        with httpx.Client(timeout=120) as client:
            for pol, user, bot in _cases():
                full_gp = plans.build(pol, Direction.OUTPUT, user, bot, decode=DecodeOptions(split_output=False))
                full, full_tokens = _full(client, vllm_url, full_gp)
                res = await guard.check(pol, Direction.OUTPUT, user, bot)
                v = res.verdict
                # Is the model's own spelling of " X\nResponse harm:" the canonical one the plugin prefills?
                ids = _chat_ids(client, vllm_url, full_gp.messages)
                _, gen, _ = _complete_ids(client, vllm_url, ids, TWO_LINES)
                canon = _chat_ids(client, vllm_url, [full_gp.messages[0], {
                    "role": "assistant", "content": f"Prompt harm: {full.prompt_harm}\nResponse harm:"}])
                canonical = canon[: len(ids)] == ids and canon[len(ids):] == gen[: len(canon) - len(ids)]
                rows.append({"policy": pol.name, "user": user, "full": [full.prompt_harm, full.response_harm],
                             "split": [v.prompt_harm, v.response_harm], "canonical_forced_tokens": canonical,
                             "full_tokens": full_tokens, "split_tokens": res.completion_tokens,
                             "requests": res.calls})
                assert v.prompt_harm == full.prompt_harm, rows[-1]
                if canonical:
                    assert v.response_harm == full.response_harm, rows[-1]
    print(json.dumps(rows, indent=1))
    canon = [r for r in rows if r["canonical_forced_tokens"]]
    print(f"split vs full: {len(rows)} checks, prompt verdict equal {sum(r['split'][0] == r['full'][0] for r in rows)}, "
          f"response verdict equal {sum(r['split'][1] == r['full'][1] for r in rows)}; canonical forced tokens "
          f"{len(canon)}, of which response verdict equal {sum(r['split'][1] == r['full'][1] for r in canon)}; "
          f"guess kept {sum(r['requests'] == 2 for r in rows)}; decoded tokens split "
          f"{sum(r['split_tokens'] for r in rows)} vs full {sum(r['full_tokens'] for r in rows)}")
    assert sum(r["split_tokens"] for r in rows) < sum(r["full_tokens"] for r in rows)


async def test_input_stop_string_changes_nothing_but_the_eos_step(vllm_url):
    with httpx.Client() as client:
        for user in USERS:
            gp = plans.build(POLICIES[0], Direction.INPUT, user, None)
            body = VllmHttpEngine([vllm_url], GUARD_MODEL).payload(gp)
            with_stop = client.post(vllm_url + "/chat/completions", json=body, timeout=120).json()
            body.pop("stop")
            body.pop("include_stop_str_in_output")
            without = client.post(vllm_url + "/chat/completions", json=body, timeout=120).json()
            a, b = (r["choices"][0]["message"]["content"] for r in (with_stop, without))
            assert a == b
            assert with_stop["usage"]["completion_tokens"] == without["usage"]["completion_tokens"] - 1
