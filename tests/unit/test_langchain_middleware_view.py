"""The agent middleware's message handling (nemo_csr_rail/langchain_messages.py): LangChain messages → the core's
transcript (any content shape, never raising) and the model's view of a thread (refusals and what they refused left
out, a refused tool result withheld)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from nemo_csr_rail.langchain_messages import METADATA_KEY, model_view, record_of, to_transcript

_TEXT = st.text(max_size=40)
_PART = st.one_of(_TEXT, st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT}),
                  st.fixed_dictionaries({"type": st.sampled_from(["image_url", "audio", "x"])}),
                  st.dictionaries(st.sampled_from(["type", "text", "url"]), _TEXT, max_size=3))
_CONTENT = st.one_of(_TEXT, st.lists(_PART, max_size=4))


@given(st.lists(st.tuples(st.sampled_from(["human", "ai", "tool", "system"]), _CONTENT), max_size=8))
def test_any_content_becomes_a_transcript(items):
    messages = []
    for i, (kind, content) in enumerate(items):
        if kind == "human":
            messages.append(HumanMessage(content=content))
        elif kind == "ai":
            messages.append(AIMessage(content=content, tool_calls=[{"id": f"c{i}", "name": "t", "args": {"a": 1}}]))
        elif kind == "tool":
            messages.append(ToolMessage(content=content, tool_call_id=f"c{i}", name="t"))
        else:
            messages.append(SystemMessage(content=content))
    transcript = to_transcript(messages)
    assert [m.index for m in transcript] == list(range(len(messages)))
    assert [m.role for m in transcript] == [{"human": "user", "ai": "assistant", "tool": "tool",
                                             "system": "system"}[k] for k, _ in items]
    for m in transcript:
        assert isinstance(m.text, str)


def test_text_parts_are_joined_and_other_parts_named():
    (m,) = to_transcript([HumanMessage(content=[{"type": "text", "text": "a"}, "b",
                                                {"type": "image_url", "image_url": {"url": "x"}}])])
    assert m.text == "a\nb" and m.other_parts == ("image_url",)
    (call,) = to_transcript([AIMessage("", tool_calls=[{"id": "c1", "name": "get", "args": {"q": 1}}])])
    assert call.tool_calls[0].id == "c1" and call.tool_calls[0].name == "get" and call.tool_calls[0].arguments == {"q": 1}


def _refusal(refused):
    return AIMessage("I'm sorry.", id="r1", response_metadata={METADATA_KEY: {"blocked": True, "refused_ids": refused}})


def test_the_model_never_reads_a_refusal_or_what_it_refused():
    thread = [HumanMessage("hi", id="u1"), AIMessage("hello", id="a1"), HumanMessage("harmful", id="u2"),
              _refusal(["u2"]), HumanMessage("next", id="u3")]
    assert [m.id for m in model_view(thread)] == ["u1", "a1", "u3"]
    assert record_of(thread[3])["blocked"] is True and record_of(thread[0]) is None


def test_a_refused_tool_result_keeps_its_place_withheld():
    thread = [HumanMessage("q", id="u1"), AIMessage("", id="a1", tool_calls=[{"id": "c1", "name": "t", "args": {}}]),
              ToolMessage("harmful page", tool_call_id="c1", id="t1"), _refusal(["t1"]), HumanMessage("n", id="u2")]
    view = model_view(thread)
    assert [m.id for m in view] == ["u1", "a1", "t1", "u2"]
    assert view[2].content == "[withheld by the safety policy]" and thread[2].content == "harmful page"


def test_a_thread_without_refusals_is_read_as_it_is():
    thread = [HumanMessage("q", id="u1"), AIMessage("a", id="a1")]
    assert model_view(thread) == thread


def _held_callbacks(callbacks):
    """The callbacks a model call made inside the middleware's ``hold`` sees."""
    from langchain_core.runnables.config import ensure_config, var_child_runnable_config

    from nemo_csr_rail.langchain_middleware import CsrGuardMiddleware

    mw = CsrGuardMiddleware.__new__(CsrGuardMiddleware)
    mw.stream = "hold"
    token = var_child_runnable_config.set({"callbacks": callbacks})
    try:
        with mw._held():
            return ensure_config()["callbacks"]
    finally:
        var_child_runnable_config.reset(token)


def test_hold_removes_streaming_handlers_from_lists_and_managers_only():
    from langchain_core.callbacks import BaseCallbackHandler, CallbackManager
    from langgraph.pregel._messages import StreamMessagesHandler

    tracer, stream = BaseCallbackHandler(), StreamMessagesHandler(lambda chunk: None, subgraphs=False)
    assert _held_callbacks([tracer, stream]) == [tracer]
    manager = CallbackManager(handlers=[tracer, stream], inheritable_handlers=[stream])
    held = _held_callbacks(manager)
    assert held.handlers == [tracer] and held.inheritable_handlers == []
    assert manager.handlers == [tracer, stream], "the caller's manager is left as it was"


def test_a_langchain_core_without_the_private_streaming_handlers_fails_at_import(monkeypatch):
    """``stream="hold"`` tells streaming handlers apart by langchain_core's private classes: an upgrade that moves
    them must fail loudly when the middleware is imported, not stream unjudged tokens later."""
    import importlib.util
    import sys

    import nemo_csr_rail.langchain_middleware as mw

    monkeypatch.setitem(sys.modules, "langchain_core.tracers._streaming", None)  # import raises ImportError
    spec = importlib.util.spec_from_file_location("csr_middleware_probe", mw.__file__)
    probe = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(probe)
    except ImportError as exc:
        assert "langchain_core.tracers._streaming" in str(exc) and "stream='hold'" in str(exc)
    else:
        raise AssertionError("the middleware imported without the streaming handler classes")
