"""The request that continues a partial answer, and whether a request can have one (pure).

Ollama continues a trailing ``assistant`` message on ``/api/chat``: the template renders it
without closing the turn, and the model carries on from its last token.
``/v1/chat/completions`` and ``/v1/messages`` are converted to that same chat, so they
continue the same way; ``/api/generate`` continues only in ``raw`` mode, where the prompt
is the model's input verbatim and the partial answer can simply be appended to it.

:func:`resumable` decides before dispatch (so the scheduler knows whether it may lend a
reserved slot to a request's long work); :func:`continuation` builds the body for the
next attempt; :func:`streamed` the body for a first attempt that the balancer streams
although its client did not ask for a stream (its answer is assembled at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dialects import Dialect, NotResumable, Obstacle, Verdict, dialect_of
from .partial import Partial

__all__ = ["continuation", "resumable", "streamed"]


def resumable(
    path: str, doc: Mapping[str, Any], *, thinks: bool = False, continues: bool = True
) -> Verdict:
    """Whether an answer to this request could be continued if its slot were taken back.

    What the balancer knows of the model, when it knows it:

    * ``thinks`` — the model thinks unless told not to (its capabilities list
      ``thinking``): Ollama then turns thinking on for a request that does not say;
    * ``continues`` — the model's chat template continues a trailing assistant message;
      False for one known to close the turn anyway (the continuation would be a new answer
      glued to the old one).  Raw generate needs no template and ignores it.

    A tool call, or thinking the model does anyway, can still show up in the answer: the
    relayed partial answer is checked again (:attr:`Partial.obstacle`) before a
    continuation is built.
    """
    dialect = dialect_of(path)
    if dialect is None:
        return Verdict(Obstacle.API)
    if not continues and dialect is not Dialect.GENERATE:
        return Verdict(Obstacle.TEMPLATE)
    return Verdict(_CHECKS[dialect](doc, thinks))


def _thinking_asked(value: Any, thinks: bool) -> bool:
    if value is None:
        return thinks
    if isinstance(value, str):
        return value.strip().lower() not in ("", "none", "false")
    return bool(value)


def _messages_ok(doc: Mapping[str, Any]) -> bool:
    messages = doc.get("messages")
    return isinstance(messages, list) and bool(messages)


def _check_chat(doc: Mapping[str, Any], thinks: bool) -> Obstacle | None:
    if not _messages_ok(doc):
        return Obstacle.BODY
    if doc.get("format"):
        return Obstacle.FORMAT
    if _thinking_asked(doc.get("think"), thinks):
        return Obstacle.THINKING
    return None


def _check_generate(doc: Mapping[str, Any], thinks: bool) -> Obstacle | None:
    if not doc.get("raw") or doc.get("suffix"):
        return Obstacle.TEMPLATE
    if not isinstance(doc.get("prompt"), str):
        return Obstacle.BODY
    if doc.get("format"):
        return Obstacle.FORMAT
    if _thinking_asked(doc.get("think"), thinks):
        return Obstacle.THINKING
    return None


def _check_openai(doc: Mapping[str, Any], thinks: bool) -> Obstacle | None:
    if not _messages_ok(doc):
        return Obstacle.BODY
    n = doc.get("n")
    if isinstance(n, int) and n > 1:
        return Obstacle.CHOICES
    response_format = doc.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        return Obstacle.FORMAT
    reasoning = doc.get("reasoning")
    effort = doc.get("reasoning_effort")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if _thinking_asked(effort, thinks):
        return Obstacle.THINKING
    return None


def _check_anthropic(doc: Mapping[str, Any], thinks: bool) -> Obstacle | None:
    if not _messages_ok(doc):
        return Obstacle.BODY
    thinking = doc.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        return Obstacle.THINKING
    if kind != "disabled":
        config = doc.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        if effort is not None and str(effort).strip().lower() in ("low", "medium", "high", "max"):
            return Obstacle.THINKING
        if thinks:
            return Obstacle.THINKING
    return None


_CHECKS = {
    Dialect.CHAT: _check_chat,
    Dialect.GENERATE: _check_generate,
    Dialect.OPENAI: _check_openai,
    Dialect.ANTHROPIC: _check_anthropic,
}


def streamed(path: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The request as an upstream stream (OpenAI: with its usage chunk, to assemble from)."""
    out = dict(doc)
    out["stream"] = True
    if dialect_of(path) is Dialect.OPENAI:
        options = out.get("stream_options")
        out["stream_options"] = {**(options if isinstance(options, dict) else {})}
        out["stream_options"]["include_usage"] = True
    return out


def continuation(path: str, doc: Mapping[str, Any], partial: Partial) -> dict[str, Any]:
    """The body that continues ``partial``: the original request plus the answer so far.

    Always a stream (the balancer stitches or assembles it); generation limits are reduced
    by the tokens already generated (at least one token stays allowed, so a limit the
    partial answer exhausted costs one token more than asked).  Raises
    :class:`NotResumable` when the request or what was relayed cannot be continued.
    """
    verdict = resumable(path, doc)
    if not verdict:
        assert verdict.obstacle is not None
        raise NotResumable(verdict.obstacle)
    if partial.why_not is not None:
        raise NotResumable(partial.why_not)
    dialect = dialect_of(path)
    out = streamed(path, doc)  # a new top level; nested values are replaced, never changed
    text = partial.text
    if dialect is Dialect.GENERATE:
        out["prompt"] = out["prompt"] + text
    elif text:
        out["messages"] = _with_answer(out["messages"], text)
    if dialect is Dialect.CHAT or dialect is Dialect.GENERATE:
        options = out.get("options")
        if isinstance(options, dict):
            out["options"] = options = dict(options)
            _reduce(options, "num_predict", partial.tokens)
    else:
        _reduce(out, "max_tokens", partial.tokens)
        if dialect is Dialect.OPENAI:
            _reduce(out, "max_completion_tokens", partial.tokens)
    return out


def _with_answer(messages: list[Any], text: str) -> list[Any]:
    """Messages whose last one is the assistant's answer so far (a prefill is extended)."""
    last = messages[-1] if messages else None
    if (
        isinstance(last, dict)
        and str(last.get("role", "")).lower() == "assistant"
        and not last.get("tool_calls")
    ):
        content = last.get("content")
        if isinstance(content, str):
            return [*messages[:-1], {**last, "content": content + text}]
        if isinstance(content, list):
            # Whatever Ollama makes of a message's parts (Anthropic: text blocks joined
            # with no separator), the answer so far then ends the conversation.
            parts = list(content)
            tail = parts[-1] if parts else None
            if isinstance(tail, dict) and tail.get("type") == "text":
                parts[-1] = {**tail, "text": str(tail.get("text") or "") + text}
            else:
                parts.append({"type": "text", "text": text})
            return [*messages[:-1], {**last, "content": parts}]
    return [*messages, {"role": "assistant", "content": text}]


def _reduce(holder: dict[str, Any], key: str, spent: int) -> None:
    value = holder.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        holder[key] = max(1, value - spent)
