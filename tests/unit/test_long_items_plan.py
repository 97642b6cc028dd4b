"""The every-character window plan (``long_items.py``): nothing of an item up to the cap goes unread, a passage of
up to ``overlap`` characters is whole in one window wherever it sits, and past the cap or an explicit
``max_windows`` the item is refused before anything is sent."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_csr_rail.errors import InputTooLong
from nemo_csr_rail.long_input import plan_windows, sample_starts
from nemo_csr_rail.long_items import (
    OVERLAP_DIVISOR,
    SAMPLE_MAX_WINDOWS,
    every_char_starts,
    overlap_for,
    plan_item,
)
from nemo_csr_rail.settings import LongInputSettings

sizes = st.integers(min_value=2, max_value=5000)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int]:
    """(text length, window size, overlap) with 0 < overlap < window."""
    window = draw(st.integers(min_value=2, max_value=4000))
    overlap = draw(st.integers(min_value=1, max_value=window - 1))
    length = draw(st.integers(min_value=0, max_value=60_000))
    return length, window, overlap


@given(layouts())
def test_every_character_index_is_inside_a_window(layout: tuple[int, int, int]) -> None:
    length, window, overlap = layout
    starts = every_char_starts(length, window, overlap)
    assert starts[0] == 0 and list(starts) == sorted(set(starts))
    assert all(s >= 0 and s + window <= max(length, window) for s in starts)  # no window runs past the text
    # consecutive windows touch or overlap, the first starts at 0 and the last reaches the end: every index is read
    assert all(b - a <= window - overlap for a, b in pairwise(starts))
    assert starts[-1] + window >= length
    if length <= 20_000:  # the direct statement, index by index, where it is cheap
        seen = bytearray(length)
        for s in starts:
            seen[s:s + window] = b"\1" * len(seen[s:s + window])
        assert all(seen)


@given(layouts(), st.data())
def test_a_passage_up_to_the_overlap_is_whole_in_one_window(layout: tuple[int, int, int], data: st.DataObject) -> None:
    length, window, overlap = layout
    passage = data.draw(st.integers(min_value=1, max_value=min(overlap, max(length, 1))))
    if length < passage:
        return
    at = data.draw(st.integers(min_value=0, max_value=length - passage))
    starts = every_char_starts(length, window, overlap)
    assert any(s <= at and at + passage <= s + window for s in starts), (at, passage, starts)


@given(st.integers(min_value=128, max_value=20_000))
def test_the_default_overlap_is_a_quarter_of_the_window(window: int) -> None:
    assert overlap_for(window) == window // OVERLAP_DIVISOR == window // 4
    assert 0 < overlap_for(window) < window


def test_the_plan_costs_what_the_docs_say() -> None:
    """3,000-character windows overlapping by 750: a 1 MB item (1,048,576 characters) is 466 windows, 4/3 of the
    350 windows that would tile it without overlap."""
    starts = every_char_starts(1_048_576, 3000, 750)
    assert len(starts) == 1 + -(-(1_048_576 - 3000) // 2250) == 466
    assert every_char_starts(3000, 3000, 750) == (0,) and every_char_starts(10, 3000, 750) == (0,)
    with pytest.raises(ValueError):
        every_char_starts(100, 10, 10)


def test_windows_judge_everything_up_to_the_cap_and_refuse_past_it() -> None:
    li = LongInputSettings(max_judged_chars=100_000)
    plan = plan_item(100_000, li, 3000, "tool result")
    assert plan.strategy == "windows" and plan.coverage == 1.0 and len(plan.starts) == 45
    with pytest.raises(InputTooLong, match=r"tool result is too long .*100001 characters exceed "
                                           r"long_input\.max_judged_chars=100000"):
        plan_item(100_001, li, 3000, "tool result")


def test_an_explicit_max_windows_bounds_the_windows_and_refuses_past_it() -> None:
    """A config that set ``max_windows`` to bound cost keeps the bound, now failing closed instead of sampling."""
    li = LongInputSettings(max_windows=8)
    assert len(plan_item(3000 + 7 * 2250, li, 3000).starts) == 8
    with pytest.raises(InputTooLong, match=r"takes 9 windows of 3000, more than long_input\.max_windows=8"):
        plan_item(3000 + 7 * 2250 + 1, li, 3000)


def test_sample_is_the_old_plan() -> None:
    """``strategy: sample`` checks what ``windows`` used to: 4 windows by default, the coverage they read."""
    li = LongInputSettings(strategy="sample")
    plan = plan_item(1_000_000, li, 3000)
    assert plan.strategy == "sample" and len(plan.starts) == SAMPLE_MAX_WINDOWS == 4
    assert plan.coverage == pytest.approx(12_000 / 1_000_000)
    assert plan_item(1_000_000, LongInputSettings(strategy="sample", max_windows=8), 3000).coverage == 0.024
    assert plan_item(2_000_000, li, 3000).coverage > 0  # no cap: sampling's cost is max_windows


@given(st.integers(min_value=0, max_value=50_000), st.integers(min_value=128, max_value=4000),
       st.integers(min_value=2, max_value=64))
def test_sample_starts_are_plan_windows(length: int, window: int, count: int) -> None:
    text = "".join(chr(65 + i % 26) for i in range(length))
    starts, coverage = sample_starts(length, window, count)
    plan = plan_windows(text, window, count)
    assert plan.windows == tuple(text[s:s + window] for s in starts) and plan.coverage == coverage
    assert len(starts) <= count


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_judged_chars": 3999}, "max_judged_chars must not be below max_chars"),
        ({"max_in_flight": 0}, "greater than or equal to 1"),
        ({"max_windows": 1}, "greater than or equal to 2"),
        ({"strategy": "truncate"}, "'windows', 'sample' or 'refuse'"),
    ],
)
def test_bad_long_input_settings_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LongInputSettings(**raw)
