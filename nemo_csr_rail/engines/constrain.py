"""Token-level constrained decoding for the verdict grammars, without torch (pure Python, unit-testable).

vLLM enforces ``structured_outputs.regex`` with xgrammar; the embedded engine enforces the same regexes here. The
prompt builder only ever asks for two shapes (see :mod:`nemo_csr_rail.prompt`):

* reasoning off — a finite set of strings (``" (harmful|unharmful)"`` after the prefill, two lines for output);
* reasoning on — ``<think>\\n[^\\n<]{1,600}\\n</think>\\n\\n`` followed by that finite set.

So a regex is compiled (with Python's own regex parser) into a sequence of *segments*: a finite set of strings, or a
bounded repetition of one character class. The matcher walks UTF-8 bytes through those segments as a small NFA whose
state is a frozenset of positions; transitions are memoised, so checking a token costs a few dict look-ups.

One deliberate addition to what xgrammar does: a *budget*. Every candidate token must leave a completion that still
fits in the remaining ``max_tokens`` (counted with the vocabulary's own tokens), so even a model with random weights
always ends with a complete, parseable verdict instead of a truncated trace. A trained model never feels this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

try:  # Python >= 3.11
    import re._constants as _c
    import re._parser as _p
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

MAX_FINITE = 4096  # the largest finite set a regex may expand to before it counts as unsupported
END = (-1, 0)  # the accepting state
_REPEAT0 = (0, 0, 0x80, 0xBF)  # a repetition before its first character


class Unsupported(ValueError):
    """The regex uses a construct outside the verdict-grammar subset."""


@dataclass(frozen=True)
class Finite:
    strings: frozenset[bytes]


@dataclass(frozen=True)
class Repeat:
    """``[class]{lo,hi}`` over characters; ``allowed[b]`` says whether an ASCII byte is in the class."""

    allowed: tuple[bool, ...]
    non_ascii: bool
    lo: int
    hi: int

    def accepts(self, byte: int) -> bool:
        return self.allowed[byte] if byte < 0x80 else self.non_ascii


Segment = Finite | Repeat


def _char_class(items: list) -> tuple[tuple[bool, ...], bool]:
    negate = False
    table = [False] * 128
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            if av < 128:
                table[av] = True
        elif op is _c.RANGE:
            lo, hi = av
            for ch in range(lo, min(hi, 127) + 1):
                table[ch] = True
        else:
            raise Unsupported(f"character class item {op}")
    if negate:
        return tuple(not x for x in table), True
    return tuple(table), False


def _expand(items: Iterable) -> set[str]:
    """Every string a repetition-free sub-pattern matches."""
    out = {""}
    for op, av in items:
        if op is _c.LITERAL:
            alts = {chr(av)}
        elif op is _c.SUBPATTERN:
            alts = _expand(av[-1])
        elif op is _c.BRANCH:
            alts = set().union(*(_expand(branch) for branch in av[1]))
        elif op is _c.IN:
            allowed, non_ascii = _char_class(av)
            if non_ascii:
                raise Unsupported("negated character class outside a repetition")
            alts = {chr(i) for i, ok in enumerate(allowed) if ok}
        else:
            raise Unsupported(f"regex construct {op}")
        out = {a + b for a in out for b in alts}
        if len(out) > MAX_FINITE:
            raise Unsupported("the regex matches too many strings")
    return out


def compile_segments(regex: str) -> tuple[Segment, ...]:
    """Split a verdict regex into finite sets and character-class repetitions; Unsupported otherwise."""
    try:
        parsed = _p.parse(regex)
    except Exception as exc:
        raise Unsupported(f"invalid regex: {exc}") from None
    segments: list[Segment] = []
    pending: list = []

    def flush() -> None:
        if pending:
            segments.append(Finite(frozenset(s.encode("utf-8") for s in _expand(pending))))
            pending.clear()

    for op, av in parsed:
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            lo, hi, sub = av
            if len(sub) != 1:
                raise Unsupported("repetition of more than one character")
            sop, sav = sub[0]
            if sop is _c.IN:
                allowed, non_ascii = _char_class(sav)
            elif sop is _c.LITERAL and sav < 128:
                allowed, non_ascii = tuple(i == sav for i in range(128)), False
            elif sop is _c.ANY:
                allowed, non_ascii = tuple(i != 10 for i in range(128)), True
            else:
                raise Unsupported(f"repetition of {sop}")
            if hi is _c.MAXREPEAT:
                raise Unsupported("unbounded repetition")
            flush()
            segments.append(Repeat(allowed, non_ascii, int(lo), int(hi)))
        else:
            pending.append((op, av))
    flush()
    return tuple(segments)


State = frozenset  # of (segment index, position); position: bytes consumed (Finite) or (characters, pending
#                    UTF-8 continuation bytes) (Repeat); END is the accepting state


def _utf8_tail(lead: int) -> tuple[int, int, int] | None:
    """(continuation bytes, range of the next byte) after a character's first byte; None if it cannot start one."""
    if lead < 0x80:
        return 0, 0x80, 0xBF
    if 0xC2 <= lead <= 0xDF:
        return 1, 0x80, 0xBF
    if 0xE0 <= lead <= 0xEF:  # no overlong forms, no surrogates
        return 2, 0xA0 if lead == 0xE0 else 0x80, 0x9F if lead == 0xED else 0xBF
    if 0xF0 <= lead <= 0xF4:
        return 3, 0x90 if lead == 0xF0 else 0x80, 0x8F if lead == 0xF4 else 0xBF
    return None


class Grammar:
    """A compiled regex plus the token table it is matched against (shared by every request with that regex)."""

    def __init__(self, regex: str, token_bytes: Mapping[bytes, list[int]], max_token_len: int) -> None:
        self.regex = regex
        self.segments = compile_segments(regex)
        self.tokens = token_bytes
        self.max_token_len = max_token_len
        self._prefixes: list[set[bytes]] = [
            {s[:k] for s in seg.strings for k in range(len(s) + 1)} if isinstance(seg, Finite) else set()
            for seg in self.segments
        ]
        self._step: dict[tuple[State, int], State] = {}
        self._est: dict[State, float] = {}
        self._dp: dict[bytes, float] = {}
        self._tail = [0.0] * (len(self.segments) + 1)
        for i in range(len(self.segments) - 1, -1, -1):
            self._tail[i] = self._state_est(self._closure({(i, _REPEAT0) if isinstance(self.segments[i], Repeat) else (i, b"")}))
        self.start: State = self._closure({(0, b"") if self.segments and isinstance(self.segments[0], Finite) else (0, _REPEAT0)})

    # -- NFA --------------------------------------------------------------------------------------------------
    def _closure(self, states: Iterable[tuple]) -> State:
        out: set[tuple] = set()
        todo = list(states)
        while todo:
            st = todo.pop()
            if st in out:
                continue
            out.add(st)
            i, pos = st
            if i == -1:
                continue
            if i >= len(self.segments):
                out.discard(st)
                todo.append(END)
                continue
            seg = self.segments[i]
            done = pos in seg.strings if isinstance(seg, Finite) else (pos[1] == 0 and pos[0] >= seg.lo)
            if done:
                nxt = i + 1
                if nxt >= len(self.segments):
                    todo.append(END)
                else:
                    todo.append((nxt, b"") if isinstance(self.segments[nxt], Finite) else (nxt, _REPEAT0))
        return frozenset(out)

    def step_byte(self, state: State, byte: int) -> State:
        key = (state, byte)
        hit = self._step.get(key)
        if hit is not None:
            return hit
        nxt: set[tuple] = set()
        for i, pos in state:
            if i == -1:
                continue
            seg = self.segments[i]
            if isinstance(seg, Finite):
                p = pos + bytes((byte,))
                if p in self._prefixes[i]:
                    nxt.add((i, p))
            else:
                count, pending, lo, hi = pos
                if pending:  # inside a multi-byte character: only a (well-formed) continuation byte may follow
                    if lo <= byte <= hi:
                        nxt.add((i, (count, pending - 1, 0x80, 0xBF)))
                elif count < seg.hi and seg.accepts(byte):
                    tail = _utf8_tail(byte)
                    if tail is not None:
                        nxt.add((i, (count + 1, *tail)))
        result = self._closure(nxt)
        self._step[key] = result
        return result

    def advance(self, state: State, data: bytes) -> State:
        for b in data:
            state = self.step_byte(state, b)
            if not state:
                break
        return state

    @staticmethod
    def accepting(state: State) -> bool:
        return END in state

    def can_continue(self, state: State) -> bool:
        for i, pos in state:
            if i == -1:
                continue
            seg = self.segments[i]
            if isinstance(seg, Finite):
                if any(len(s) > len(pos) and s.startswith(pos) for s in seg.strings):
                    return True
            elif pos[1] or pos[0] < seg.hi:
                return True
        return False

    def finished(self, state: State) -> bool:
        return self.accepting(state) and not self.can_continue(state)

    # -- budget: the fewest tokens that can still complete a match ----------------------------------------
    def _tokens_for(self, rest: bytes) -> float:
        """Fewest vocabulary tokens that spell ``rest`` exactly (inf when impossible)."""
        hit = self._dp.get(rest)
        if hit is not None:
            return hit
        n = len(rest)
        best = [math.inf] * (n + 1)
        best[n] = 0.0
        for p in range(n - 1, -1, -1):
            for k in range(1, min(self.max_token_len, n - p) + 1):
                if rest[p:p + k] in self.tokens and best[p + k] + 1 < best[p]:
                    best[p] = best[p + k] + 1
        self._dp[rest] = best[0]
        return best[0]

    def _state_est(self, state: State) -> float:
        best = math.inf
        for i, pos in state:
            if i == -1:
                return 0.0
            seg = self.segments[i]
            if isinstance(seg, Finite):
                for s in seg.strings:
                    if s.startswith(pos) and s != pos:
                        best = min(best, self._tokens_for(s[len(pos):]) + self._tail[i + 1])
            else:
                best = min(best, pos[1] + max(0, seg.lo - pos[0]) + self._tail[i + 1])
        return best

    def estimate(self, state: State) -> float:
        hit = self._est.get(state)
        if hit is None:
            hit = self._est[state] = self._state_est(state)
        return hit

    # -- candidates -----------------------------------------------------------------------------------------
    def enumerable(self, state: State) -> bool:
        """Whether every continuation from here is finite (the allowed tokens can be listed without a vocab scan)."""
        last = len(self.segments) - 1
        return all(i == -1 or (i == last and isinstance(self.segments[i], Finite)) for i, _ in state)

    def listed_tokens(self, state: State) -> set[int]:
        """The tokens that keep a match alive, when :meth:`enumerable` (ignores the budget)."""
        out: set[int] = set()
        for i, pos in state:
            if i == -1:
                continue
            seg = self.segments[i]
            assert isinstance(seg, Finite)
            for s in seg.strings:
                if s.startswith(pos):
                    rest = s[len(pos):]
                    for k in range(1, min(len(rest), self.max_token_len) + 1):
                        out.update(self.tokens.get(rest[:k], ()))
        return out


class Matcher:
    """One request's walk through a :class:`Grammar` (greedy decoding, one token at a time)."""

    def __init__(self, grammar: Grammar, token_table: list[bytes | None], max_tokens: int) -> None:
        self.g = grammar
        self.table = token_table
        self.state = grammar.start
        self.max_tokens = max_tokens
        self.generated = 0
        self.budgeted = grammar.estimate(grammar.start) <= max_tokens

    def next_state(self, token_id: int) -> State | None:
        """The state after ``token_id``, or None if the token breaks the grammar or the token budget."""
        data = self.table[token_id] if 0 <= token_id < len(self.table) else None
        if not data:
            return None
        nxt = self.g.advance(self.state, data)
        if not nxt:
            return None
        if self.budgeted and self.g.estimate(nxt) > self.max_tokens - self.generated - 1:
            return None
        return nxt

    def allows(self, token_id: int) -> bool:
        return self.next_state(token_id) is not None

    def allowed_tokens(self) -> list[int] | None:
        """Every allowed token id, when it can be listed cheaply; None when a full vocabulary scan would be needed."""
        if not self.g.enumerable(self.state):
            return None
        return sorted(t for t in self.g.listed_tokens(self.state) if self.allows(t))

    def accept(self, token_id: int) -> None:
        nxt = self.next_state(token_id)
        if nxt is None:
            raise ValueError(f"token {token_id} is not allowed here")
        self.state = nxt
        self.generated += 1

    @property
    def accepting(self) -> bool:
        return self.g.accepting(self.state)

    @property
    def finished(self) -> bool:
        return self.g.finished(self.state)
