"""The guard as a LangChain agent middleware: ``create_agent(model, tools, middleware=[guard.middleware(...)])``.

Where it judges, and why there (docs/langchain-agents.md). Two hooks, ``wrap_model_call`` and ``wrap_tool_call``:

* **before the model is called** (inside ``wrap_model_call``): every message of the request the model is about to
  read — after every other middleware's ``before_model`` — that is not judged yet: user messages, tool results,
  and the answers and tool calls of the history (a client can forge them), the whole history through
  :func:`nemo_csr_rail.coverage.judge_messages` and its ``judged_messages`` cache, so a later turn after a tool
  exchange is judged like the first. A block returns the refusal instead of calling the model (no tool calls in
  it, so the loop ends). No ``before_model`` node: one graph node fewer a step.
* **after the model answers** (inside ``wrap_model_call``): the answer and each tool call it makes, *before* the
  answer enters the agent's state. A blocked answer or call is replaced by the refusal, so a harmful call never
  reaches a tool and a harmful answer is never in the state, a checkpoint or a stream. ``after_model`` would be too
  late: by then the model node's output is in the state and was already sent to ``stream_mode="updates"``/
  ``"values"``. With ``stream="hold"`` (the default) the model's tokens are withheld from streaming callback
  handlers until the answer is judged (the answer is then released whole, as the model node's output).
* **around each tool call** (``wrap_tool_call``): the result, and the text of an exception the tool raised, before
  either becomes a ``ToolMessage``. A blocked one becomes a ``ToolMessage`` with ``status="error"`` holding the
  refusal; the next model call ends the turn with it, without calling the model.

Every block ends the turn with one final ``AIMessage``: the policy's refusal with the guard model's reasoning.
What was judged and why is in its ``response_metadata["nemo_csr_rail"]`` (never sent back to a provider, unlike
``additional_kwargs``). A refused exchange stays in the thread's state, but the model never reads it again: the
refused message and the refusal are left out of later requests, so one refused message does not block the rest of
a conversation.

The checks go through the guard's runtime (the NeMo rails' own: policies, prompts, decode plans, ``reasoning``,
``mode: monitor``, ``on_error``, caches, telemetry), which never raises; a failure inside this module blocks
(fail closed). LangChain only: this module imports no NeMo Guardrails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables.config import ensure_config, var_child_runnable_config
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolCallRequest

from nemo_csr_rail.agent import judged_turn, render_tool_call, render_tool_result
from nemo_csr_rail.coverage import judge_messages
from nemo_csr_rail.decision import Decision, render_refusal
from nemo_csr_rail.errors import ConfigError, CsrError
from nemo_csr_rail.langchain_messages import (
    METADATA_KEY,
    blocked_index,
    blocked_tool_message,
    blocked_tool_result,
    model_view,
    only_calls,
    only_tool_results,
    record_for,
    record_of,
    refusal_message,
    run_sync,
    text_of,
    to_transcript,
    tool_messages,
    without_calls,
    without_tool_results,
)
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.transcript import Message

try:  # private to langchain_core: what tells a streaming handler apart (stream="hold" removes those)
    from langchain_core.tracers._streaming import _StreamingCallbackHandler, _V2StreamingCallbackHandler
except ImportError as exc:  # an upgrade moved them: fail here, saying so, not by streaming unjudged tokens later
    raise ImportError(
        "nemo_csr_rail.langchain_middleware needs langchain_core.tracers._streaming._StreamingCallbackHandler and "
        "_V2StreamingCallbackHandler (to withhold tokens until an answer is judged, stream='hold'); this "
        f"langchain-core has no such names ({exc}). Install a langchain-core version the nemo-csr-rail "
        "'langchain' extra supports.") from exc

StreamMode = Literal["hold", "live"]


# ----------------------------------------------------------------------------------------------- the middleware
class CsrGuardMiddleware(AgentMiddleware):
    """Judge every message an agent's model reads, every answer and tool call it makes, and every tool result and
    tool error, with the guard's runtime (made by :meth:`nemo_csr_rail.langchain.CsrGuard.middleware`).

    ``policy`` judges everything; ``input_policy`` (user messages), ``output_policy`` (answers) and
    ``tool_policy`` (tool calls and results) override it per direction. ``stream``: ``"hold"`` withholds the
    model's tokens from streaming until its answer is judged; ``"live"`` lets them stream as they come (the
    caller then sees unjudged text; the answer still enters the state only judged).
    """

    def __init__(self, runtime: Any, policy: str | None = None, *, input_policy: str | None = None,
                 output_policy: str | None = None, tool_policy: str | None = None, stream: StreamMode = "hold",
                 name: str | None = None) -> None:
        super().__init__()
        if stream not in ("hold", "live"):
            raise ValueError(f"stream must be 'hold' or 'live', not {stream!r}")
        self.runtime = runtime
        self.input_policy = input_policy or policy
        self.output_policy = output_policy or policy
        self.tool_policy = tool_policy or policy
        for p in {self.input_policy, self.output_policy, self.tool_policy}:
            runtime.policy(p)  # an unknown policy fails here, naming it, not on the first turn
        self.stream = stream
        self._name = name
        self.tools = []

    @property
    def name(self) -> str:
        return self._name or "CsrGuard"

    # ---------------------------------------------------------------------------------------------- judging
    def _whole_history(self, policy: str | None) -> bool:
        """``coverage: all`` (the default): every message of the history is judged (each once, through the
        ``judged_messages`` cache); ``coverage: last``: only what is new in this step."""
        try:
            return self.runtime.policy(policy).coverage != "last"
        except ConfigError:
            return True  # the check itself reports the unknown policy

    async def _guarded(self, policy: str | None, side: Direction, check: Awaitable[Decision]) -> Decision:
        try:
            return await check
        except Exception as exc:  # the runtime never raises; anything else here is a bug: fail closed, say why
            err = CsrError(f"internal error in the agent middleware: {type(exc).__name__}: {exc}")
            return Decision.from_error(self.runtime.policy_label(policy), side, err, on_error="block",
                                       latency_ms=None, error_refusal=self.runtime.settings.error_refusal)

    async def _first_block(self, checks: Sequence[tuple[str | None, Direction, Awaitable[Decision]]]) -> Decision:
        """Run the checks at once; the first block in the order given decides, else the first decision."""
        if len(checks) == 1:  # the usual case: no task to schedule
            return await self._guarded(*checks[0])
        decisions = await asyncio.gather(*(self._guarded(p, side, c) for p, side, c in checks))
        return next((d for d in decisions if d.blocked), decisions[0])

    def _messages(self, policy: str | None, side: Direction, transcript: list[Message],
                  current: int | None) -> tuple[str | None, Direction, Awaitable[Decision]]:
        return policy, side, judge_messages(self.runtime, policy, side, transcript, current=current)

    def _item(self, policy: str | None, direction: Direction, user: str | None,
              bot: str | None = None) -> tuple[str | None, Direction, Awaitable[Decision]]:
        return policy, direction.judged_as, self.runtime.decide(policy, direction, user, bot)

    async def _check_input(self, view: Sequence[BaseMessage]) -> AIMessage | None:
        """The refusal that ends the turn before the model reads ``view``, or None: the model may be called."""
        ended = blocked_tool_result(view)
        if ended is not None:
            return ended
        transcript = to_transcript(view)
        users = [m.index for m in transcript if m.role == "user"]
        if not users:
            return None
        current = users[-1]
        checks = []
        if self._whole_history(self.input_policy):
            users_only = transcript if self.input_policy == self.tool_policy else without_tool_results(transcript)
            checks.append(self._messages(self.input_policy, Direction.INPUT, users_only, current))
        elif transcript[-1].role == "user":  # coverage: last — a new user turn (tool results: wrap_tool_call)
            checks.append(self._messages(self.input_policy, Direction.INPUT, transcript, current))
        if self.input_policy != self.tool_policy and self._whole_history(self.tool_policy):
            checks.append(self._messages(self.tool_policy, Direction.INPUT, only_tool_results(transcript), None))
        if any(m.role == "assistant" for m in transcript):
            # the answers and calls in the history are read by the model too (a client can forge them): the
            # model's own were judged when it gave them, so this is the cache's work unless one is new
            checks.extend(self._history_output_checks(transcript))
        if not checks:
            return None
        decision = await self._first_block(checks)
        if not decision.blocked:
            return None
        idx = blocked_index(decision)
        refused = transcript[idx if idx is not None and 0 <= idx < len(view) else current]
        side = self._answer_side(decision, refused) if refused.role == "assistant" else "input"
        ids = [view[refused.index].id] if view[refused.index].id else []
        return refusal_message(decision, side, refused_ids=ids)

    def _history_output_checks(self, transcript: list[Message]) -> list[tuple[str | None, Direction,
                                                                                Awaitable[Decision]]]:
        out_all, tool_all = self._whole_history(self.output_policy), self._whole_history(self.tool_policy)
        if self.output_policy == self.tool_policy:
            return [self._messages(self.output_policy, Direction.OUTPUT, transcript, None)] if out_all else []
        checks = []
        if out_all:
            checks.append(self._messages(self.output_policy, Direction.OUTPUT, without_calls(transcript), None))
        if tool_all:
            checks.append(self._messages(self.tool_policy, Direction.OUTPUT, only_calls(transcript), None))
        return checks

    async def _check_answer(self, request: ModelRequest, response: ModelResponse) -> ModelResponse:
        answer = next((m for m in response.result if isinstance(m, AIMessage)), None)
        if answer is None:
            return response
        # the answer with the user message it answers: the history's answers and calls were judged with this step's
        # request, and an item's verdict depends on nothing else, so this judges exactly what is new
        asked = next((m for m in reversed(request.messages) if m.type == "human"), None)
        transcript = to_transcript([answer] if asked is None else [asked, answer])
        current = len(transcript) - 1
        mine = transcript[current]
        checks = []
        if self._whole_history(self.output_policy):
            scope = transcript if self.output_policy == self.tool_policy else without_calls(transcript)
            checks.append(self._messages(self.output_policy, Direction.OUTPUT, scope, current))
        elif mine.text.strip():
            checks.append(self._messages(self.output_policy, Direction.OUTPUT, transcript, current))
        if self.output_policy != self.tool_policy or not self._whole_history(self.tool_policy):
            if self._whole_history(self.tool_policy):
                checks.append(self._messages(self.tool_policy, Direction.OUTPUT, only_calls(transcript), current))
            else:  # coverage: last — this answer's calls, each as the tool-call rail judges it
                user = next((m.text for m in reversed(transcript) if m.role == "user"), None)
                for c in mine.tool_calls:
                    checks.append(self._item(self.tool_policy, Direction.TOOL_CALL,
                                             *judged_turn(Direction.TOOL_CALL, user,
                                                          render_tool_call(c.name, c.arguments))))
        if not checks:
            return response
        decision = await self._first_block(checks)
        if not decision.blocked:
            if decision.monitored and decision.would_block:
                answer.response_metadata[METADATA_KEY] = record_for(decision, "output", blocked=False)
            return response
        # replaced_id: the id the answer's tokens streamed under (stream="live"), so a UI can swap that bubble
        side = self._answer_side(decision, mine)
        return ModelResponse(result=[refusal_message(decision, side, replaced_id=answer.id,
                                                     refused_calls=[c.get("id") for c in answer.tool_calls])])

    def _answer_side(self, decision: Decision, blocked: Message) -> str:
        """Whether an answer was blocked for a tool call or for its text: the refusal is the deciding item's own,
        so an answer with both is told apart by which direction's refusal it carries."""
        if not blocked.tool_calls:
            return "output"
        if not blocked.text.strip():
            return "tool_call"
        reasoning = decision.verdict.reasoning if decision.verdict is not None else None
        call_refusal = render_refusal(self.runtime.refusal_template(decision.policy, Direction.TOOL_CALL), reasoning,
                                      decision.policy)
        return "tool_call" if decision.refusal == call_refusal else "output"

    async def _check_tool_output(self, request: ToolCallRequest, result: Any) -> Any:
        for m in tool_messages(result):
            decision = await self._judge_tool_result(m, request)
            if decision.blocked:
                return blocked_tool_message(decision, request, m)
        return result

    async def _judge_tool_result(self, m: BaseMessage, request: ToolCallRequest) -> Decision:
        """One tool result (or the text of a tool error, or another message the tool's ``Command`` adds) on its
        own: the judged item is the same as in the whole history (a tool result is judged without context), so the
        next request's check finds it in the cache."""
        text = text_of(m.content)
        name = m.name or request.tool_call.get("name")
        if self._whole_history(self.tool_policy):
            one = [Message(index=0, role="tool", text=text, tool_call_id=getattr(m, "tool_call_id", None), name=name)]
            check = self._messages(self.tool_policy, Direction.INPUT, one, 0)
        else:
            check = self._item(self.tool_policy, Direction.TOOL_RESULT,
                               *judged_turn(Direction.TOOL_RESULT, None, render_tool_result(name, text)))
        return await self._guarded(check[0], check[1], check[2])

    async def _check_tool_error(self, request: ToolCallRequest, exc: Exception) -> ToolMessage | None:
        call = request.tool_call
        m = ToolMessage(content=str(exc), tool_call_id=call.get("id") or "", name=call.get("name"), status="error")
        checked = await self._check_tool_output(request, m)
        return None if checked is m else checked

    # ------------------------------------------------------------------------------------------------- hooks
    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        request = _with_view(request)
        refusal = run_sync(self._check_input(request.messages))
        if refusal is not None:
            return ModelResponse(result=[refusal])
        with self._held():
            response = handler(request)
        return run_sync(self._check_answer(request, response))

    async def awrap_model_call(self, request: ModelRequest,
                               handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> Any:
        request = _with_view(request)
        refusal = await self._check_input(request.messages)
        if refusal is not None:
            return ModelResponse(result=[refusal])
        with self._held():
            response = await handler(request)
        return await self._check_answer(request, response)

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Any]) -> Any:
        try:
            result = handler(request)
        except GraphBubbleUp:
            raise  # an interrupt, not an error
        except Exception as exc:
            blocked = run_sync(self._check_tool_error(request, exc))
            if blocked is None:
                raise
            return blocked
        return run_sync(self._check_tool_output(request, result))

    async def awrap_tool_call(self, request: ToolCallRequest,
                              handler: Callable[[ToolCallRequest], Awaitable[Any]]) -> Any:
        try:
            result = await handler(request)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            blocked = await self._check_tool_error(request, exc)
            if blocked is None:
                raise
            return blocked
        return await self._check_tool_output(request, result)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """``stream="hold"``: the model call runs without the streaming callback handlers (``stream_mode=
        "messages"``, ``astream_events``, ``astream_log``), so no token reaches the caller before the answer is
        judged; tracers and other handlers keep seeing it. The judged answer (or the refusal) is then released
        as the model node's output."""
        if self.stream == "live":
            yield
            return
        config = ensure_config()
        callbacks = config.get("callbacks")
        if isinstance(callbacks, list):  # a plain handler list (outside a graph node)
            quiet: Any = [h for h in callbacks if not _streams(h)]
            if len(quiet) == len(callbacks):
                yield
                return
        else:
            streaming = {id(h): h for h in [*(getattr(callbacks, "handlers", None) or ()),
                                           *(getattr(callbacks, "inheritable_handlers", None) or ())] if _streams(h)}
            if not streaming:
                yield
                return
            quiet = callbacks.copy()
            for h in streaming.values():
                quiet.remove_handler(h)
        token = var_child_runnable_config.set({**config, "callbacks": quiet})
        try:
            yield
        finally:
            var_child_runnable_config.reset(token)


# ---------------------------------------------------------------------------------------------------- helpers
def _streams(handler: Any) -> bool:
    """A callback handler that sends a model's tokens to a caller as they come (LangGraph's ``messages`` stream,
    ``astream_events``, ``astream_log``, the v2 event protocol)."""
    return isinstance(handler, (_StreamingCallbackHandler, _V2StreamingCallbackHandler))


def _with_view(request: ModelRequest) -> ModelRequest:
    view = model_view(request.messages)
    return request if len(view) == len(request.messages) and all(
        a is b for a, b in zip(view, request.messages, strict=True)) else request.override(messages=view)


__all__ = ["METADATA_KEY", "CsrGuardMiddleware", "record_of", "to_transcript"]
