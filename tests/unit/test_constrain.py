"""The embedded engine's constrained decoding (pure Python, no torch): every walk ends in a full regex match."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_csr_rail import plans
from nemo_csr_rail.engines.constrain import Grammar, Matcher, Unsupported, compile_segments
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import SIDES, Direction, Policy

WORDS = [" harmful", " unharmful", " harm", "harm", "ful", " un", "Prompt", " Prompt", "Response", "<think>",
         "</think>", "<", "think", ">\n", "\n\n", "\n", " the", " user", " request", "Prompt harm:", " is", " ok.",
         "é", "\u2603", "<think>\nThe"]
TABLE: list[bytes | None] = [None] + [bytes([b]) for b in range(256)] + [w.encode() for w in WORDS]
BY_BYTES: dict[bytes, list[int]] = {}
for _i, _b in enumerate(TABLE):
    if _b:
        BY_BYTES.setdefault(_b, []).append(_i)
MAXLEN = max(len(b) for b in BY_BYTES)


def regexes() -> list[tuple[str, int]]:
    out = []
    for pol in (Policy.custom("c", "No politics."), Policy.taxonomy()):
        for d in SIDES:  # the agent directions decode as these two
            for r in (False, True):
                for prefill in (True, False):
                    gp = plans.build(pol, d, "hi", "yo" if d is Direction.OUTPUT else None, reasoning=r, decode=DecodeOptions(assistant_prefill=prefill, reasoning_max_tokens=120))
                    out.append((gp.regex, gp.max_tokens))
    return sorted(set(out))


def walk(regex: str, max_tokens: int, rng: random.Random) -> tuple[str, bool]:
    g = Grammar(regex, BY_BYTES, MAXLEN)
    m = Matcher(g, TABLE, max_tokens)
    out = b""
    for _ in range(max_tokens):
        if m.finished:
            break
        allowed = [t for t in range(len(TABLE)) if m.allows(t)]
        listed = m.allowed_tokens()
        if listed is not None:
            assert listed == allowed
        assert allowed, f"dead end after {out!r}"
        t = rng.choice(allowed)
        m.accept(t)
        out += TABLE[t]  # type: ignore[operator]
    return out.decode("utf-8"), m.finished


@pytest.mark.parametrize(("regex", "max_tokens"), regexes())
def test_random_walks_always_end_in_a_full_match(regex: str, max_tokens: int) -> None:
    rng = random.Random(7)
    for _ in range(6):
        text, finished = walk(regex, max_tokens, rng)
        assert finished
        assert re.fullmatch(regex, text), text


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_think_walks_are_valid_utf8_and_bounded(seed: int) -> None:
    regex = plans.grammar.THINK_REGEX + "Prompt harm: (harmful|unharmful)"
    text, finished = walk(regex, 60, random.Random(seed))  # tight budget: the trace must close in time
    assert finished and re.fullmatch(regex, text)


def test_segments_of_the_verdict_regexes() -> None:
    segs = compile_segments(plans.grammar.THINK_REGEX + "Prompt harm: (harmful|unharmful)")
    assert len(segs) == 3
    assert segs[0].strings == frozenset({b"<think>\n"})  # type: ignore[union-attr]
    assert (segs[1].lo, segs[1].hi) == (1, 600)  # type: ignore[union-attr]
    assert len(segs[2].strings) == 2  # type: ignore[union-attr]
    out = compile_segments(" (harmful|unharmful)\nResponse harm: (harmful|unharmful)")
    assert len(out) == 1 and len(out[0].strings) == 4  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["a*", "(ab)+", "x{2,}", r"\d+", "[", "(a|b){3}"])
def test_unsupported_constructs(bad: str) -> None:
    with pytest.raises(Unsupported):
        compile_segments(bad)


def test_special_and_unknown_tokens_are_never_allowed() -> None:
    g = Grammar(" (harmful|unharmful)", BY_BYTES, MAXLEN)
    m = Matcher(g, TABLE, 32)
    assert not m.allows(0) and not m.allows(10_000)
    assert m.allows(BY_BYTES[b" harmful"][0]) and not m.allows(BY_BYTES[b"harm"][0])
