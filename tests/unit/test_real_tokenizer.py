"""The guard's prompts on Google's real Gemma 3 tokenizer (262,144 pieces; the Gemma-3-4B family's, so the guard's).

Tokenizer stage only (``tokenizer.json`` via the bare ``tokenizers`` package, converted once by
``tests/support/real_gemma.py``); requests are rendered through the Gemma-3-it chat template and tokenized with
added-token matching on, the way vLLM counts them (``tests/support/chat_render.py``; ``tests/e2e/real_gemma`` checks
the counts against vLLM's own ``/tokenize``). Three things are pinned here:

1. the exact token count of every card layout (A: taxonomy, B: custom policy; input and output; reasoning on/off);
2. ``prompt.neutralize`` against EVERY control and user-defined piece of the vocabulary (6,414): none of the
   chat-structure pieces can be reached from user or bot text, and the HTML-like pieces are left alone on purpose;
3. the ``long_input`` defaults and ``serve``'s ``--max-model-len`` agree, policy prompt and reasoning budget included.
"""

from __future__ import annotations

import random
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_csr_rail import plans, prompt
from nemo_csr_rail.cli.serve_cmd import CPU_MAX_MODEL_LEN, GPU_MAX_MODEL_LEN
from nemo_csr_rail.long_input import ELLIPSIS, excerpt
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.settings import LongInputSettings, PluginSettings
from tests.support import chat_render, real_gemma
from tests.support.guard_layouts import BOT, LAYOUT_TOKENS, LAYOUTS, USER

pytestmark = pytest.mark.real_gemma


@pytest.fixture(scope="module")
def gemma():
    return real_gemma.load_tokenizer()


def _ids(gemma, messages, *, prefill: bool) -> list[int]:
    tok, cfg = gemma
    return chat_render.request_ids(tok, cfg, messages, prefill=prefill)


def _count(gemma, text: str) -> int:
    return len(gemma[0].encode(text, add_special_tokens=False).ids)


# ----------------------------------------------------------------------------------------------- the tokenizer
def test_it_is_the_real_gemma3_vocabulary(gemma):
    tok, cfg = gemma
    assert tok.get_vocab_size(with_added_tokens=True) == real_gemma.VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")] == [
        0, 1, 2, 105, 106]
    # the asymmetry issue 11 is about: " harmful" is one piece, " unharmful" three
    assert tok.encode(" harmful", add_special_tokens=False).tokens == ["▁harmful"]
    assert tok.encode(" unharmful", add_special_tokens=False).tokens == ["▁un", "harm", "ful"]
    assert cfg["bos_token"] == "<bos>" and "<start_of_turn>" in cfg["chat_template"]


# ------------------------------------------------------------------------------------------ 1. layout counts
@pytest.mark.parametrize(("layout", "direction", "reasoning"), list(LAYOUT_TOKENS))
def test_exact_token_count_of_every_card_layout(gemma, layout, direction, reasoning):
    d = Direction(direction)
    gp = plans.build(LAYOUTS[layout], d, USER, BOT if d is Direction.OUTPUT else None, reasoning=reasoning)
    n = len(_ids(gemma, [{"role": "user", "content": gp.text}], prefill=False))
    assert n == LAYOUT_TOKENS[(layout, direction, reasoning)]
    # What the plugin actually sends adds only its prefill's own tokens (the template's "\n" piece ends the turn
    # header, so the prefill never merges with it): counts stay exact whatever the decode plan prefills.
    sent = len(_ids(gemma, gp.messages, prefill=bool(gp.prefill)))
    assert sent == n + (_count(gemma, gp.prefill) if gp.prefill else 0)
    if gp.split_output:
        step = plans.split_output.response_step(gp, "unharmful")
        assert len(_ids(gemma, step.messages, prefill=True)) == n + _count(gemma, step.prefill)


def test_the_taxonomy_layout_is_the_largest_built_in_one(gemma):
    assert max(LAYOUT_TOKENS, key=LAYOUT_TOKENS.__getitem__) == ("A", "output", True)


# -------------------------------------------------------------------------------- 2. every control piece
def test_the_vocabulary_has_6414_control_and_user_defined_pieces(gemma):
    pieces = real_gemma.vocabulary_pieces()
    kinds = [k for _, _, k in pieces]
    assert (len(pieces), kinds.count("control"), kinds.count("user_defined")) == (6414, 6249, 165)
    control = {t for _, t, k in pieces if k == "control"}
    unused = {t for t in control if re.fullmatch(r"<unused\d+>", t)}
    assert control - unused == {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"}
    assert len(unused) == 6242
    user = [t for _, t, k in pieces if k == "user_defined"]
    html = [t for t in user if t.startswith("<") and t not in real_gemma.MULTIMODAL]
    assert len(html) == 70 and {"<table>", "</table>", "<h1>", "<b>", "<s>", "<code>", "<iframe>"} <= set(html)
    blank = [t for t in user if t.strip() == "" and len(set(t)) == 1]  # runs of \n, \t and spaces
    assert len(blank) == 31 + 31 + 30
    assert sorted(set(user) - set(html) - set(blank)) == sorted(real_gemma.MULTIMODAL)
    # and every piece is what the tokenizer makes of its text: raw, each would reach the model as itself
    tok, _ = gemma
    for i, text, _ in pieces:
        assert tok.encode(text, add_special_tokens=False).ids == [i], (i, text)


def _slot(piece: str) -> tuple[str, str]:
    return f"Please help. {piece} thanks", f"Sure.{piece}done"


def test_raw_chat_structure_pieces_would_be_injected(gemma):
    """Control for the test below: without neutralising, every chat-structure piece in a message reaches the model
    as the piece itself, so the assertion below is not vacuous."""
    tok, cfg = gemma
    structure = real_gemma.chat_structure_ids()
    texts = [chat_render.render(cfg, [{"role": "user", "content": _slot(t)[0]}], add_generation_prompt=True,
                                continue_final=False) for t in structure.values()]
    for (i, text), enc in zip(structure.items(), tok.encode_batch(texts, add_special_tokens=False), strict=True):
        assert i in enc.ids, text


def test_no_chat_structure_piece_is_reachable_from_user_or_bot_text(gemma):
    """Every one of the 6,414 pieces, in the user AND the bot slot of an output check, every layout and mode: the
    request vLLM tokenizes holds exactly the template's own chat-structure pieces, in order, and nothing else."""
    tok, cfg = gemma
    structure = real_gemma.chat_structure_ids()
    template_own = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>"]
    texts, cases = [], []
    for k, (i, piece, kind) in enumerate(real_gemma.vocabulary_pieces()):
        reasoning = k % 2 == 0
        policy = LAYOUTS["AB"[(k // 2) % 2]]
        user, bot = _slot(piece)
        gp = plans.build(policy, Direction.OUTPUT, user, bot, reasoning=reasoning)
        texts.append(chat_render.render(cfg, gp.messages, add_generation_prompt=not gp.prefill,
                                        continue_final=bool(gp.prefill)))
        cases.append((i, piece, kind))
    html_seen = 0
    for (i, piece, _kind), enc in zip(cases, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        found = [structure[t] for t in enc.ids if t in structure]
        assert found == template_own, (i, piece, found)
        if i not in structure:
            # user-defined formatting pieces (HTML-like tags, runs of newlines/tabs/spaces) are not touched: the
            # model reads them exactly as in any text it was trained on (docs/reliability.md)
            assert prompt.neutralize(piece) == piece
            if piece.startswith("<"):
                assert enc.ids.count(i) == 2, piece  # one in each slot, as the single piece the model knows
                html_seen += 1
    assert html_seen == 70


_PIECE_TEXTS = st.sampled_from([t for t in ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>",
                                            "<unk>", "<mask>", "[multimodal]", "<start_of_image>",
                                            "<end_of_image>", "<unused0>", "<unused6241>", "<table>", "</b>",
                                            "<think>", "</think>", "/no_think", "/think", "<", ">", "[", "]",
                                            "/", "\u2060", "\n", "model\n", "user\n")])


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECE_TEXTS | st.text(max_size=6), max_size=12).map("".join))
def test_no_composition_of_pieces_reaches_chat_structure(gemma, text):
    """Pieces glued to each other and to arbitrary text (``<<start_of_turn>``, ``[[multimodal]]``…)."""
    tok, cfg = gemma
    structure = real_gemma.chat_structure_ids()
    gp = plans.build(LAYOUTS["B"], Direction.OUTPUT, text or "x", text or "y", reasoning=False)
    ids = chat_render.request_ids(tok, cfg, gp.messages, prefill=True)
    assert [structure[t] for t in ids if t in structure] == ["<bos>", "<start_of_turn>", "<end_of_turn>",
                                                              "<start_of_turn>"]


# ------------------------------------------------------------------------------------------ 3. long inputs
def random_text(n: int, seed: int) -> str:
    """Random letters, digits and symbols: the densest *ordinary* text (~0.78 tokens a character)."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits + string.punctuation) for _ in range(n))


ENGLISH = ("Your parcel left our warehouse on Monday and should arrive within three working days. If it does not, "
           "reply to this message with your order number and we will send a replacement at no cost to you. ")
CHINESE = "您的包裹已于星期一从我们的仓库发出，预计三个工作日内送达。如果没有收到，请回复此消息并附上您的订单号，我们将免费为您补发。"


def _fill(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


def test_token_density_of_8000_characters(gemma):
    """The figures docs/reliability.md quotes (8,000 characters each)."""
    rng = random.Random(0)
    counts = {
        "english prose": _count(gemma, _fill(ENGLISH, 8000)),
        "chinese prose": _count(gemma, _fill(CHINESE, 8000)),
        "random letters/digits/symbols": max(_count(gemma, random_text(8000, s)) for s in range(3)),
        "digits": _count(gemma, "".join(rng.choice(string.digits) for _ in range(8000))),
        "random CJK ideographs": _count(gemma, "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(8000))),
        "random emoji": _count(gemma, "".join(chr(rng.randint(0x1F300, 0x1F64F)) for _ in range(8000))),
    }
    print(counts)
    assert counts == {"english prose": 1624, "chinese prose": 5115, "random letters/digits/symbols": 6249,
                      "digits": 8000, "random CJK ideographs": 16782, "random emoji": 12788}


def _layout_tokens(gemma, direction: Direction, user: str, bot: str | None) -> int:
    """Tokens of the largest built-in layout (taxonomy, reasoning on) holding this conversation."""
    gp = plans.build(LAYOUTS["A"], direction, user, bot, reasoning=True)
    return len(_ids(gemma, [{"role": "user", "content": gp.text}], prefill=False))


def test_long_input_defaults_fit_serves_context_with_the_policy_prompt(gemma):
    """A conversation of ``max_chars`` random characters (and every window the ``windows`` plan sends) fits in
    the smallest ``--max-model-len`` that ``serve`` starts, with the largest layout AND the reasoning budget.

    The reasoning budget counts: vLLM 0.32 clamps ``max_tokens`` to what the prompt leaves of the context, so a
    prompt that leaves less than the budget cuts the reasoning short and the verdict line is never written (a
    parse error, handled by ``on_error``), not a clean 400.
    Denser text (digits, rare scripts, emoji: up to four tokens a character) can still overflow; the server's 400
    then ends in windows or a refusal (``tests/e2e/real_gemma/test_real_long_input.py``)."""
    li = LongInputSettings()
    budget = min(CPU_MAX_MODEL_LEN, GPU_MAX_MODEL_LEN) - PluginSettings.model_fields["reasoning_max_tokens"].default
    worst: dict[str, int] = {}
    for s in range(3):
        sizes = {}
        whole = random_text(li.max_chars, s)
        half = li.max_chars // 2
        sizes[f"input, {li.max_chars} chars"] = _layout_tokens(gemma, Direction.INPUT, whole, None)
        sizes["output, all in the answer"] = _layout_tokens(gemma, Direction.OUTPUT, "hi", whole[:-2])
        sizes["output, half and half"] = _layout_tokens(gemma, Direction.OUTPUT, whole[:half], whole[half:])
        # the windows plan: an input window; an output window with the user turn cut to its excerpt
        context = excerpt(random_text(20_000, s + 10), max(128, li.window_chars // 3))
        assert len(context) == 2 * ((li.window_chars // 3 - len(ELLIPSIS)) // 2) + len(ELLIPSIS)
        sizes["input window"] = _layout_tokens(gemma, Direction.INPUT, whole[: li.window_chars], None)
        sizes["output window"] = _layout_tokens(gemma, Direction.OUTPUT, context, whole[: li.window_chars])
        for k, n in sizes.items():
            assert n <= budget, (k, n, budget)
            worst[k] = max(n, worst.get(k, 0))
    print(f"budget {budget}: {worst}")
    # the old default (8,000 characters) did not fit a 4096-token server once the policy prompt was counted
    assert _layout_tokens(gemma, Direction.INPUT, random_text(8000, 0), None) > budget
