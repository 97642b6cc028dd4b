"""The embedded engine on the tiny random Gemma-3: prompts, constrained verdicts, logprobs, errors, real rails.

Random weights make every verdict arbitrary, so the tests check what must hold for any weights (the verdict parses,
the prompt is byte-exact, errors fail closed) and drive block/allow decisions through the policy ``threshold``
on P(harmful) (which the engine's logprobs provide): threshold 0.01 blocks, threshold 1.0 allows.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.completion import Engine
from nemo_csr_rail.errors import EngineUnavailable, GuardTimeout, InputTooLong
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.settings import DEFAULT_ERROR_REFUSAL
from tests.support.tiny_cache import tiny_checkpoint

pytestmark = pytest.mark.embedded

POLICIES = {"custom": Policy.custom("retail", "Do not discuss politics or religion."),
            "taxonomy": Policy.taxonomy("safety")}
BOT = "Sure, here is how to reset your router."


@pytest.fixture(scope="session")
def tiny() -> Path:
    return tiny_checkpoint()


@pytest.fixture(scope="session")
def engine(tiny: Path):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    e = EmbeddedEngine(str(tiny), device="cpu")
    e.load()
    return e


def client(engine, **kw) -> CsrClient:
    return CsrClient(engine=engine, timeout_s=kw.pop("timeout_s", 60), reasoning_max_tokens=96, **kw)


# ------------------------------------------------------------------------------------------------- every mode
@pytest.mark.parametrize("kind", ["custom", "taxonomy"])
@pytest.mark.parametrize("direction", [Direction.INPUT, Direction.OUTPUT])
@pytest.mark.parametrize("reasoning", [False, True])
async def test_every_mode_returns_a_parsed_verdict(engine, kind, direction, reasoning):
    c = client(engine)
    bot = BOT if direction is Direction.OUTPUT else None
    gp = c.build_prompt(POLICIES[kind], direction, "How do I reset my router?", bot, reasoning)
    comp = await engine.complete(gp, timeout_s=60)
    one = bool(gp.verdict_choices)  # a bare verdict: one forward pass, one token (like vLLM's max_tokens 1)
    if one:
        assert comp.decode_plan == "one_token" and comp.finish_reason == "length" and comp.completion_tokens == 1
        assert comp.text in gp.verdict_choices
    else:
        assert comp.finish_reason == "stop" and comp.completion_tokens <= gp.max_tokens
    assert comp.prompt_tokens == len(engine.prompt_ids(gp)) > 100
    assert comp.endpoint == f"embedded:{engine.model}"
    result = await c.check(POLICIES[kind], direction, "How do I reset my router?", bot, reasoning=reasoning)
    v = result.verdict
    assert v.harm(direction) in ("harmful", "unharmful")
    if direction is Direction.OUTPUT:
        assert v.prompt_harm in ("harmful", "unharmful") and v.response_harm in ("harmful", "unharmful")
    if reasoning:
        assert comp.text.startswith("<think>\n") and "\n</think>\n\nPrompt harm: " in comp.text
        assert v.reasoning and len(v.reasoning) <= 600 and comp.logprobs is None
    else:
        assert not comp.text.startswith("Prompt harm:")  # only the continuation of the prefill comes back
        assert v.confidence is not None and 0.0 < v.confidence < 1.0
        if gp.split_output:  # the prompt half of a split output check asks for no logprobs
            assert comp.logprobs is None
            return
        entries = comp.logprobs
        if one:  # the chosen first token, and both candidates' raw logprobs
            (e,) = entries
            assert comp.text.startswith(e["token"]) and len(e["top_logprobs"]) == 2
            assert e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])
            assert result.prompt_tokens == comp.prompt_tokens and result.completion_tokens == 1
            return
        # like vLLM: one entry per generated token; a stop string ends on the verdict (no stop token), otherwise
        # the closing stop token comes last (counted, not in the text)
        decoded = "".join(e["token"] for e in entries)
        assert decoded in (comp.text, comp.text + "<eos>", comp.text + "<end_of_turn>"), decoded
        assert len(entries) == comp.completion_tokens
        for e in entries:
            assert set(e) == {"token", "logprob", "bytes", "top_logprobs"} and e["logprob"] <= 0
            assert 1 <= len(e["top_logprobs"]) <= 5
            assert e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-6
    assert result.prompt_tokens == comp.prompt_tokens


async def test_prefill_prompt_is_rendered_like_vllm_continue_final_message(engine):
    gp = plans.build(POLICIES["taxonomy"], Direction.INPUT, "hi <start_of_turn>", None, reasoning=False)
    assert gp.prefill == "Prompt harm:"
    rendered = engine.render(gp)
    assert rendered == f"<bos><start_of_turn>user\n{gp.text}<end_of_turn>\n<start_of_turn>model\nPrompt harm:"
    ids = engine.prompt_ids(gp)
    tok = engine.load().tokenizer
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(tok.convert_tokens_to_ids("<start_of_turn>")) == 2  # the user's one is neutralised text
    assert tok.decode(ids[-3:]).endswith("\nPrompt harm:")
    think = plans.build(POLICIES["custom"], Direction.INPUT, "hi", None, reasoning=True)
    assert engine.render(think) == f"<bos><start_of_turn>user\n{think.text}<end_of_turn>\n<start_of_turn>model\n"


async def test_unconstrained_decoding_matches_transformers_generate(engine):
    """The hand-written KV-cache loop is plain greedy decoding: same tokens as ``model.generate``."""
    import torch

    gp = plans.build(POLICIES["custom"], Direction.INPUT, "hello", None, reasoning=False,
                     decode=DecodeOptions(structured_output=False, logprobs=False))
    comp = await engine.complete(gp, timeout_s=60)
    m = engine.load()
    ids = torch.tensor([engine.prompt_ids(gp)])
    out = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gp.max_tokens, do_sample=False,
                           eos_token_id=sorted(m.eos_ids), pad_token_id=0)
    assert comp.text == m.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


async def test_kv_cache_goes_by_the_name_this_transformers_takes(engine, recwarn):
    """transformers 5 renamed ``past_key_values`` to ``cache`` and warns on the old name at every decode step:
    the engine asks the model which one it takes, so a check is silent (and still plain greedy decoding, above)."""
    import inspect

    m = engine.load()
    assert m.cache_arg in inspect.signature(m.model.forward).parameters
    gp = plans.build(POLICIES["custom"], Direction.INPUT, "hello", None, reasoning=True)
    await engine.complete(gp, timeout_s=60)
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]


async def test_a_model_that_returns_no_kv_cache_fails_closed(engine, monkeypatch):
    m = engine.load()
    monkeypatch.setattr(m, "cache_arg", "no_such_cache")
    gp = plans.build(POLICIES["custom"], Direction.INPUT, "hello", None, reasoning=True)
    with pytest.raises(EngineUnavailable, match="returned no KV cache"):
        await engine.complete(gp, timeout_s=60)


async def test_concurrent_checks_are_serialised_and_deterministic(engine):
    c = client(engine)
    texts = [f"question number {i}" for i in range(6)]
    seq = [(await c.check(POLICIES["taxonomy"], Direction.INPUT, t, None)).verdict for t in texts]
    par = await asyncio.gather(*(c.check(POLICIES["taxonomy"], Direction.INPUT, t, None) for t in texts))
    assert [r.verdict for r in par] == seq
    assert [r.verdict.confidence for r in par] == [v.confidence for v in seq]


async def test_production_architecture_gemma3_for_conditional_generation():
    """The real checkpoint is a Gemma3ForConditionalGeneration (vision tower included): text-only use works."""
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    e = EmbeddedEngine(str(tiny_checkpoint(multimodal=True)), device="cpu")
    assert type(e.load().model).__name__ == "Gemma3ForConditionalGeneration"
    c = client(e)
    for reasoning in (False, True):
        v = (await c.check(POLICIES["taxonomy"], Direction.OUTPUT, "hi", BOT, reasoning=reasoning)).verdict
        assert v.response_harm in ("harmful", "unharmful") and v.prompt_harm in ("harmful", "unharmful")


# ----------------------------------------------------------------------------------------------------- errors
async def test_input_longer_than_the_context_is_input_too_long(tiny):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    e = EmbeddedEngine(str(tiny), device="cpu", max_model_len=256)
    with pytest.raises(InputTooLong, match="maximum context length is 256"):
        await client(e).check(POLICIES["custom"], Direction.INPUT, "word " * 400, None)


async def test_deadline_gives_guard_timeout_and_the_engine_stays_usable(engine):
    c = client(engine)
    with pytest.raises(GuardTimeout):
        await c.check(POLICIES["custom"], Direction.OUTPUT, "hi " * 300, BOT, reasoning=True, timeout_s=0.02)
    ok = await c.check(POLICIES["taxonomy"], Direction.INPUT, "hi", None)
    assert ok.verdict.prompt_harm in ("harmful", "unharmful")


async def test_missing_local_path_names_it():
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    e = EmbeddedEngine("/nonexistent/csr-weights")
    assert isinstance(e, Engine)
    with pytest.raises(EngineUnavailable) as exc:
        await client(e).check(POLICIES["custom"], Direction.INPUT, "hi", None)
    msg = exc.value.message
    assert "/nonexistent/csr-weights (no such directory)" in msg and "embedded.model_path" in msg


async def test_repo_id_not_in_cache_offline_says_where_it_looked(tmp_path, monkeypatch):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineUnavailable) as exc:
        EmbeddedEngine("nvidia/Nemotron-Content-Safety-Reasoning-4B").load()
    msg = exc.value.message
    assert str(tmp_path / "hub" / "models--nvidia--Nemotron-Content-Safety-Reasoning-4B") in msg
    assert "HF_HUB_OFFLINE" in msg and "huggingface-cli download nvidia/Nemotron-Content-Safety-Reasoning-4B" in msg


def test_repo_id_found_in_the_hf_cache_layout(tiny, tmp_path, monkeypatch):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(tiny, target_is_directory=True)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert EmbeddedEngine("acme/tiny").resolve_path() == snap


async def test_missing_torch_says_how_to_install(monkeypatch):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(EngineUnavailable, match=r"pip install '\.\[embedded\]' in a clone"):
        await client(EmbeddedEngine("/whatever")).check(POLICIES["custom"], Direction.INPUT, "hi", None)


# ------------------------------------------------------------------------------------------- real NeMo rails
def _plugin(model_path: str) -> dict:
    fast = "Do not discuss politics or religion."
    return {
        "engine": "embedded",
        "embedded": {"model_path": model_path, "device": "cpu"},
        "timeout_s": 60,
        "policies": {
            "lenient": {"policy": fast, "reasoning": False, "threshold": 1.0},   # P(harmful) < 1: always allows
            "strict": {"policy": fast, "reasoning": False, "threshold": 0.01},   # P(harmful) > 0.01: always blocks
            "explain": {"policy": fast, "reasoning": True},
        },
    }


def _config(tmp_path, main_llm, model_path: str, inp: str, out: str):
    from tests.support.rails_configs import write_config

    return write_config(tmp_path / "cfg", guard_url="http://127.0.0.1:9/v1", main_url=main_llm.url,
                        plugin=_plugin(model_path), input_flows=[f'csr check input $policy="{inp}"'],
                        output_flows=[f'csr check output $policy="{out}"'])


async def test_rails_allow_then_block_output_with_engine_embedded(tiny, tmp_path, main_llm):
    from tests.support.e2e_helpers import ask, rails_for

    rails = rails_for(_config(tmp_path, main_llm, str(tiny), "lenient", "strict"))
    t0 = time.perf_counter()
    reply, outcomes = await ask(rails, "Where is my order?")
    assert reply.startswith("I'm sorry, I can't share that answer.")  # the output rail's default refusal
    assert len(main_llm.chat_requests()) >= 1  # the input was allowed, so the application LLM answered
    assert [(o["metadata"]["direction"], o["metadata"]["decision"]) for o in outcomes] == [
        ("input", "allow"), ("output", "block")]
    for o in outcomes:
        meta = o["metadata"]
        assert meta["failed"] is False and 0 < meta["confidence"] < 1 and meta["prompt_tokens"] > 100
    assert time.perf_counter() - t0 < 60


async def test_rails_block_input_and_explain_with_engine_embedded(tiny, tmp_path, main_llm):
    from tests.support.e2e_helpers import ask, rails_for

    rails = rails_for(_config(tmp_path, main_llm, str(tiny), "strict", "explain"))
    reply, outcomes = await ask(rails, "Who should I vote for?")
    assert reply.startswith("I'm sorry, I can't help with that.")
    assert main_llm.chat_requests() == [] or all("vote" not in str(r) for r in main_llm.chat_requests())
    (o,) = outcomes
    assert o["metadata"]["decision"] == "block" and o["metadata"]["direction"] == "input"


async def test_rails_missing_weights_fail_closed_with_a_clear_message(tmp_path, main_llm):
    from tests.support.e2e_helpers import ask, rails_for

    rails = rails_for(_config(tmp_path, main_llm, str(tmp_path / "no-such-weights"), "lenient", "lenient"))
    reply, outcomes = await ask(rails, "Where is my order?")
    assert reply == DEFAULT_ERROR_REFUSAL
    assert main_llm.chat_requests() == []
    (o,) = outcomes
    meta = o["metadata"]
    assert meta["failed"] is True and meta["decision"] == "block" and meta["error_kind"] == "engine_unavailable"
    assert str(tmp_path / "no-such-weights") in meta["error"] and "embedded.model_path" in meta["error"]
