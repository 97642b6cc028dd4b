"""Scripted guard answers and small configs/datasets for the ``eval`` and ``check`` command tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.support.rails_configs import write_config
from tests.support.standin import guard_answer, last_user_content, split_guard_prompt

CUSTOM_POLICY = "No talk about politics or elections."


def plugin(**extra: Any) -> dict[str, Any]:
    return {"max_retries": 0, "timeout_s": 5,
            "policies": {"safety": {"taxonomy": "nemotron_v2"},
                         "custom": {"policy": CUSTOM_POLICY},
                         "strict": {"taxonomy": "nemotron_v2", "threshold": 0.5}},
            **extra}


def config(path: Path, guard_url: str, **extra: Any) -> Path:
    return write_config(path, guard_url=guard_url, main_url=None, plugin=plugin(**extra))


def scripted(prompt_answers: dict[str, bool], response_answers: dict[tuple[str, str], bool],
             *, flip_when_thinking: Iterable[str] = (), malformed: Iterable[str] = ()) -> Callable[[dict[str, Any]], str]:
    """A 'model' that answers from tables keyed by the judged text (known verdicts for known rows).

    ``flip_when_thinking``: user texts whose prompt verdict is inverted in reasoning mode (so the two runs of
    ``--compare reasoning`` differ). ``malformed``: user texts answered off-format (a guard error for that row).
    """
    flip, bad = set(flip_when_thinking), set(malformed)

    def respond(body: dict[str, Any]) -> str:
        user, bot, think = split_guard_prompt(last_user_content(body))
        if user in bad:
            return "Prompt harm: perhaps"
        p = prompt_answers.get(user, False)
        if think and user in flip:
            p = not p
        r = None if bot is None else response_answers.get((user, bot), False)
        return guard_answer(p, r, f"Scripted reason for {user}." if think else None)

    return respond


def judged_user(body: dict[str, Any]) -> str:
    return split_guard_prompt(last_user_content(body))[0]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def f1_of(pairs: Iterable[tuple[str, bool]]) -> dict[str, Any]:
    """Independent computation from (gold label, predicted harmful) pairs."""
    tp = fp = tn = fn = 0
    for gold, pred in pairs:
        g = gold == "harmful"
        if g and pred:
            tp += 1
        elif g:
            fn += 1
        elif pred:
            fp += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (0.0 if tp + fp + fn else None)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / (tp + fp + tn + fn)}
