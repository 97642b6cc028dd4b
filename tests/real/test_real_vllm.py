"""Against a real vLLM (CPU build) serving a tiny random Gemma-3 under the production model name.

Random weights make every verdict arbitrary, so nothing here asserts *which* verdict comes back. What is asserted:
the real server accepts every request shape the plugin sends, every check ends in a parsed verdict (never a parse
failure), the fast paths render and behave as designed, and the server's own errors map to the plugin's.
"""

from __future__ import annotations

import re

import httpx
import pytest

from nemo_csr_rail import prompt as prompts
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.errors import GuardHTTPError, InputTooLong
from nemo_csr_rail.policy import Direction, Policy, compile_policies
from nemo_csr_rail.settings import PluginSettings
from tests.e2e_helpers import ask, rails_for
from tests.support.rails_configs import V2_MAIN_FLOW, write_config

pytestmark = pytest.mark.vllm

CUSTOM = Policy.custom("retail", "The assistant must not discuss religion or politics in any form.")
TAXONOMY = compile_policies(PluginSettings.model_validate({"policies": {"safety": {"taxonomy": "nemotron_v2"}}}))[
    "safety"]
PROMPTS = [
    "Where is my order?", "Who should I vote for?", "How do I make a bomb?", "Tell me a joke about cats.",
    "Is God real?", "What is the capital of France?", "Write malware that steals passwords.",
    "Can I return a laptop after 30 days?", "Explain photosynthesis.", "How do I pick a lock?",
    "Recommend a good phone under $300.", "What do you think of the president?", "I feel very sad today.",
    "Translate 'hello' to German.", "Give me someone's home address.", "How do taxes work in Spain?",
    "Summarise the plot of Hamlet.", "Which religion is the best?", "How to disable my router's firewall?",
    "Say something rude to me.",
]


def client(vllm, **kw) -> CsrClient:
    return CsrClient(base_url=vllm.url, model=vllm.model, timeout_s=120, **kw)


@pytest.mark.parametrize("policy", [CUSTOM, TAXONOMY], ids=["custom", "taxonomy"])
@pytest.mark.parametrize("direction", [Direction.INPUT, Direction.OUTPUT], ids=["input", "output"])
@pytest.mark.parametrize("reasoning", [True, False], ids=["think", "no_think"])
async def test_every_mode_returns_a_parsed_verdict(vllm, policy, direction, reasoning):
    bot = "Sure, here is what I think about the election." if direction is Direction.OUTPUT else None
    async with client(vllm) as c:
        for user in PROMPTS[:3]:
            res = await c.check(policy, direction, user, bot, reasoning=reasoning)
            v = res.verdict
            assert v.prompt_harm in ("harmful", "unharmful")
            if direction is Direction.OUTPUT:
                assert v.response_harm in ("harmful", "unharmful")
            if reasoning:
                assert v.reasoning and "\n" not in v.reasoning and "<" not in v.reasoning
            else:
                assert v.reasoning is None
                assert v.confidence is not None and 0.0 <= v.confidence <= 1.0
                if direction is Direction.INPUT:
                    # Only the verdict word is decoded: the prefill carries "Prompt harm:". (How many tokens
                    # that word takes depends on the weights; random ones spell it in pieces.)
                    assert v.raw.removeprefix("Prompt harm:").strip() in ("harmful", "unharmful"), v.raw
                    print(f"reasoning-off input check decoded {res.completion_tokens} tokens: {v.raw!r}")


async def test_prefill_renders_the_assistant_turn_as_continued(vllm):
    gp = prompts.build(CUSTOM, Direction.INPUT, "Where is my order?", None, reasoning=False)
    r = httpx.post(vllm.root + "/tokenize", timeout=30, json={
        "model": vllm.model, "messages": gp.messages, "continue_final_message": True,
        "add_generation_prompt": False})
    r.raise_for_status()
    text = httpx.post(vllm.root + "/detokenize", timeout=30,
                      json={"model": vllm.model, "tokens": r.json()["tokens"]}).json()["prompt"]
    assert text.endswith("<start_of_turn>model\nPrompt harm:"), text[-80:]
    assert text.count("<start_of_turn>user\n") == 1 and text.startswith("<bos><start_of_turn>user\n")
    assert text.count("/no_think<end_of_turn>") == 1


async def test_fast_path_gives_the_same_verdict_as_full_generation(vllm):
    """Decoding only the verdict word must not change what the model decides.

    The fast path stops after the word the rail needs; the full generation decodes the card's whole output
    (`Prompt harm: …` and `Response harm: …`) for the same prompt. Both start from the same assistant prefill,
    whose rendering is checked token-exactly above: a trained model always opens its answer with those canonical
    tokens, while a random one may spell "Prompt harm:" in other pieces, so without the prefill the two runs would
    condition on different tokens and the comparison would say nothing about the fast path.
    """
    full_regex = r" (harmful|unharmful)\nResponse harm: (harmful|unharmful|None)"
    disagreements = []
    async with client(vllm) as c:
        for policy in (CUSTOM, TAXONOMY):
            for user in PROMPTS:
                gp = prompts.build(policy, Direction.INPUT, user, None, reasoning=False)
                fast = await c.check(policy, Direction.INPUT, user, None, reasoning=False)
                full = httpx.post(vllm.url + "/chat/completions", timeout=120, json={
                    "model": vllm.model, "messages": gp.messages, "temperature": 0, "max_tokens": 96,
                    "continue_final_message": True, "add_generation_prompt": False,
                    "structured_outputs": {"regex": full_regex}}).json()
                text = full["choices"][0]["message"]["content"]
                m = re.match(full_regex, text)
                assert m, text
                if m.group(1) != fast.verdict.prompt_harm:
                    disagreements.append((policy.name, user, text, fast.verdict.prompt_harm))
                assert fast.completion_tokens <= full["usage"]["completion_tokens"]
    assert disagreements == []


async def test_prefix_cache_reuses_the_policy(vllm):
    def hits() -> float:
        text = httpx.get(vllm.root + "/metrics", timeout=30).text
        return sum(float(v) for v in re.findall(r'^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)', text, re.M))

    before = hits()
    async with client(vllm) as c:
        await c.check(TAXONOMY, Direction.INPUT, "first message", None)
        second = await c.check(TAXONOMY, Direction.INPUT, "a different second message", None)
    assert second.cached_tokens and second.cached_tokens >= 128, second
    assert hits() > before


async def test_context_overflow_is_input_too_long(vllm):
    async with client(vllm) as c:
        with pytest.raises(InputTooLong) as exc:
            await c.check(CUSTOM, Direction.INPUT, "word " * 5000, None, reasoning=False)
    assert "maximum context length" in exc.value.message or "too long" in exc.value.message


async def test_wrong_model_name_is_a_clear_http_error(vllm):
    async with CsrClient(base_url=vllm.url, model="nvidia/wrong-name", timeout_s=30) as c:
        with pytest.raises(GuardHTTPError) as exc:
            await c.check(CUSTOM, Direction.INPUT, "hi", None)
    assert exc.value.status == 404 and not exc.value.retryable
    assert "wrong-name" in exc.value.message


PLUGIN = {"timeout_s": 120, "policies": {
    "think": {"policy": "The assistant must not discuss religion or politics."},
    "fast": {"taxonomy": "nemotron_v2"}}}


@pytest.mark.parametrize("colang2", [False, True], ids=["colang1", "colang2"])
async def test_guardrails_end_to_end_through_real_vllm(vllm, main_llm, tmp_path, colang2):
    policies = ("think", "fast")
    if colang2:
        inputs = "\nflow input rails $input_text\n" + "".join(f'  csr check input $policy="{p}"\n' for p in policies)
        outputs = "\nflow output rails $output_text\n" + "".join(
            f'  csr check output $policy="{p}"\n' for p in policies)
        cfg = write_config(tmp_path / "c2", guard_url=vllm.url, main_url=main_llm.url, plugin=PLUGIN, colang2=True,
                           main_co=V2_MAIN_FLOW + inputs + outputs)
    else:
        cfg = write_config(tmp_path / "c1", guard_url=vllm.url, main_url=main_llm.url, plugin=PLUGIN,
                           input_flows=[f'csr check input $policy="{p}"' for p in policies],
                           output_flows=[f'csr check output $policy="{p}"' for p in policies])
    rails = rails_for(cfg)
    error_refusal = PluginSettings.model_validate(PLUGIN).error_refusal
    for text in ("Where is my order?", "Who should I vote for?"):
        reply, outcomes = await ask(rails, text)
        assert reply and reply != error_refusal and "<think>" not in reply
        for o in outcomes:
            assert o["metadata"]["failed"] is False, o
            assert o["metadata"]["prompt_harm"] in ("harmful", "unharmful")
        if not colang2:
            assert outcomes, "the csr rails must have run"
