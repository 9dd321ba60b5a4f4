"""Anthropic's Messages API, ``POST /v1/messages``, as Ollama serves it.

The contract is docs/anthropic.md.

Ollama runs it as middleware over ``ChatHandler``: the body is validated and
turned into a native chat request (:mod:`.anthropic_request`), the chat runs
as on ``/api/chat``, and each native chunk is rewritten into Anthropic's shape
(:mod:`.anthropic_stream`).  Errors carry Anthropic's body with the real status
even when ``stream`` is true, as long as nothing was sent; once events flowed, a
failure just ends the stream (here: the ``drop_after`` fault), with no error
event and no ``message_stop``.

What the emulated model does: a thinking model thinks first (on unless the
request turns it off); with tools, a conversation that ends with the user's turn
gets a call of the first tool (arguments filled from its schema), and one that
ends with a tool result gets a text answer.  It never calls ``web_search``, so
Ollama's server-side search loop (which needs ollama.com) is never entered.
"""

from __future__ import annotations

import contextlib
import random
import secrets

from aiohttp import web

from ollama_wire import names
from ollama_wire.errors import anthropic_error_body

from . import generation
from .anthropic_request import MessagesRequest, RequestError, Tool, parse_request
from .anthropic_stream import EventStream, NativeChunk, ToolCall, message_body, sse
from .continuation import Turn, seed_text
from .inference import Generation, GenerationPlan, chat_plan, schedule
from .keys import NODE
from .registry import LibraryEntry
from .streams import ApiError, ChunkStream, StreamCut, read_body
from .wire import go_json

__all__ = ["routes"]

routes = web.RouteTableDef()
_ids = random.Random()

SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive"}


def _full_name(model: LibraryEntry) -> str:
    n = model.name
    return f"{n.host}/{n.namespace}/{n.model}:{n.tag}"


def _handler_error(exc: ApiError, stream: bool) -> web.Response:
    # Written by AnthropicWriter through json.Encoder: no charset, a trailing newline,
    # and the SSE headers the middleware set before the handler ran.
    headers = {"Content-Type": "application/json", **(SSE_HEADERS if stream else {})}
    body = go_json(anthropic_error_body(exc.status, exc.message)) + b"\n"
    return web.Response(status=exc.status, body=body, headers=headers)


def _model(request: web.Request, req: MessagesRequest) -> LibraryEntry:
    """``ChatHandler``'s checks, in its order."""
    try:
        names.parse(req.model.strip())
    except names.InvalidModelName:
        raise ApiError(400, "invalid model name") from None
    model = request.app[NODE].library.find(req.model.strip())
    if model is None:
        raise ApiError(404, f"model '{req.model}' not found")
    if "completion" not in model.spec.capabilities:
        raise ApiError(400, f'"{req.model}" does not support chat')
    if req.tools and "tools" not in model.spec.capabilities:
        raise ApiError(400, f"{_full_name(model)} does not support tools")
    return model


def _thinks(req: MessagesRequest, model: LibraryEntry) -> bool:
    # Unset means on for thinking models; asked of a model that cannot think, it is
    # dropped quietly (relax_thinking) instead of /api/chat's 400.
    if "thinking" not in model.spec.capabilities:
        return False
    return req.think is None or bool(req.think)


def _tool_to_call(req: MessagesRequest) -> Tool | None:
    if not req.messages or req.messages[-1].role != "user":
        return None
    return next((t for t in req.tools if not t.web_search), None)


def _plan(req: MessagesRequest, model: LibraryEntry) -> tuple[GenerationPlan, ToolCall | None]:
    """A trailing assistant message (Anthropic's prefill) is a partial answer to continue."""
    turns = [Turn(m.role, m.content, m.thinking) for m in req.messages]
    tool = _tool_to_call(req)
    call = None
    if tool is not None:
        seed = generation.seed_for(None, model.spec.digest, seed_text(turns))
        call = ToolCall(
            generation.tool_call_id(_ids),
            tool.name,
            generation.tool_arguments(seed, tool.parameters),
        )
    think = generation.think_tokens(model.spec.response_tokens) if _thinks(req, model) else 0
    plan = chat_plan(
        model,
        turns,
        options=dict(req.options),
        keep_alive=None,  # /v1/messages cannot carry keep_alive
        think_tokens=think,
        tool_call_tokens=generation.count_tokens(go_json(call.arguments or {}).decode()) + 4
        if call
        else 0,
    )
    return plan, call


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    started = node.clock.monotonic()
    try:
        req = parse_request(await read_body(request))
    except RequestError as exc:
        raise ApiError(400, exc.message) from None  # the middleware's own 400s
    message_id = "msg_" + secrets.token_hex(12)
    try:
        model = _model(request, req)
        if not req.messages:
            return await _load_only(request, req, model, message_id)
        plan, call = _plan(req, model)
        gen = Generation(node, plan, started)
        await gen.schedule()
    except ApiError as exc:
        return _handler_error(exc, req.stream)
    try:
        if req.stream:
            return await _stream(request, req, gen, call, message_id)
        async with contextlib.aclosing(gen.parts()) as parts:
            async for _ in parts:
                pass
        calls = [call] if call is not None and gen.tool_call_complete else []
        body = message_body(
            message_id,
            req.model,
            thinking="".join(gen.thinking),
            text=gen.text,
            tool_calls=calls,
            done_reason=gen.done_reason,
            input_tokens=plan.prompt_tokens,
            output_tokens=gen.eval_count,
        )
        return web.Response(body=go_json(body) + b"\n", content_type="application/json")
    finally:
        gen.release()


async def _load_only(
    request: web.Request, req: MessagesRequest, model: LibraryEntry, message_id: str
) -> web.StreamResponse:
    """Every message converted to nothing: ChatHandler loads the model (``done_reason: load``)."""
    node = request.app[NODE]
    runner = await schedule(node, model, num_ctx=None, keep_alive=None)
    node.scheduler.release(runner)
    if not req.stream:
        body = message_body(
            message_id,
            req.model,
            thinking="",
            text="",
            tool_calls=[],
            done_reason="load",
            input_tokens=0,
            output_tokens=0,
        )
        return web.Response(body=go_json(body) + b"\n", content_type="application/json")
    out = ChunkStream(request, "text/event-stream", SSE_HEADERS, silent_cut=True)
    events = EventStream(message_id, req.model, req.estimate)
    try:
        for event in events.feed(NativeChunk(done=True, done_reason="load")):
            await out.write(sse(event))
    except StreamCut:
        pass
    return await out.finish()


async def _stream(
    request: web.Request,
    req: MessagesRequest,
    gen: Generation,
    call: ToolCall | None,
    message_id: str,
) -> web.StreamResponse:
    out = ChunkStream(request, "text/event-stream", SSE_HEADERS, silent_cut=True)
    events = EventStream(message_id, req.model, req.estimate)
    try:
        async with contextlib.aclosing(gen.parts()) as parts:
            async for kind, token in parts:
                if kind == "tool":
                    continue  # the parser hands the call over whole, at the end
                chunk = (
                    NativeChunk(thinking=token)
                    if kind == "thinking"
                    else NativeChunk(content=token)
                )
                for event in events.feed(chunk):
                    await out.write(sse(event))
        done = NativeChunk(
            tool_calls=[call] if call is not None and gen.tool_call_complete else [],
            done=True,
            done_reason=gen.done_reason,
            prompt_eval_count=gen.plan.prompt_tokens,
            eval_count=gen.eval_count,
        )
        for event in events.feed(done):
            await out.write(sse(event))
    except StreamCut:
        pass  # Ollama's writer turns the native error line into no event at all
    return await out.finish()
