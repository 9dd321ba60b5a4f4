"""OpenAI-compatible ``/v1`` handlers (docs/ollama.md §2.6).

Ollama implements these as middleware over the native handlers, so errors
keep the native message and status, rewritten into the OpenAI shape (done by
the app's error middleware for every ``/v1`` path).
"""

from __future__ import annotations

import base64
import contextlib
import random
import struct
from typing import Any

from aiohttp import web

from . import generation
from .continuation import Turn, render_chat
from .inference import (
    Generation,
    GenerationPlan,
    chat_plan,
    completion_model,
    embed_texts,
    embedding_model,
)
from .keys import NODE
from .registry import LibraryEntry
from .streams import ApiError, ChunkStream, json_response, read_json
from .wire import go_json

__all__ = ["routes"]

routes = web.RouteTableDef()
SSE = "text/event-stream"
_ids = random.Random()


def _options(doc: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    limit = doc.get("max_tokens", doc.get("max_completion_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool):
        options["num_predict"] = limit
    if isinstance(doc.get("seed"), int):
        options["seed"] = doc["seed"]
    return options


def _usage(gen: Generation) -> dict[str, int]:
    prompt, completion = gen.plan.prompt_tokens, len(gen.tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(gen: Generation) -> str:
    return "length" if gen.done_reason == "length" else "stop"


def _sse(obj: Any) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


async def _generate(request: web.Request, plan: GenerationPlan) -> Generation:
    gen = Generation(request.app[NODE], plan, request[STARTED])
    await gen.schedule()
    return gen


def _chat(doc: dict[str, Any], model: LibraryEntry, turns: list[Turn]) -> GenerationPlan:
    """The middleware's native chat request: a trailing assistant message is continued."""
    return chat_plan(model, turns, options=_options(doc), keep_alive=None)


STARTED = web.RequestKey("started", float)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    request[STARTED] = node.clock.monotonic()
    doc = await read_json(request, "openai.ChatCompletionRequest")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    name = doc.get("model") or ""
    if not name:
        raise ApiError(400, "model is required")
    model = completion_model(node.library, name, "chat")
    turns = [
        Turn(str(m.get("role", "")), _text(m.get("content")), str(m.get("reasoning") or ""))
        for m in messages
        if isinstance(m, dict)
    ]
    gen = await _generate(request, _chat(doc, model, turns))
    ident = f"chatcmpl-{_ids.randrange(999)}"
    created = node.clock.wall_ns() // 10**9
    head = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": name,
        "system_fingerprint": "fp_ollama",
    }
    try:
        async with contextlib.aclosing(gen.stream()) as tokens:
            if not doc.get("stream"):
                async for _ in tokens:
                    pass
                message = {"role": "assistant", "content": gen.text}
                choice = {"index": 0, "message": message, "finish_reason": _finish(gen)}
                body = {
                    **head,
                    "object": "chat.completion",
                    "choices": [choice],
                    "usage": _usage(gen),
                }
                return json_response(body)
            out = ChunkStream(request, SSE)
            first = True
            async for token in tokens:
                delta = {"role": "assistant", "content": token} if first else {"content": token}
                first = False
                await out.write(
                    _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                )
        await out.write(
            _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(gen)}]})
        )
        if (doc.get("stream_options") or {}).get("include_usage"):
            await out.write(_sse({**head, "choices": [], "usage": _usage(gen)}))
        await out.write(b"data: [DONE]\n\n")
        return await out.finish()
    finally:
        gen.release()


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    request[STARTED] = node.clock.monotonic()
    doc = await read_json(request, "openai.CompletionRequest")
    prompt = doc.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "invalid type for 'prompt' field, expected string")
    name = doc.get("model") or ""
    model = completion_model(node.library, name, "generate")
    # A generate request: the prompt is templated as a user turn, never continued.
    options = _options(doc)
    user = [Turn("user", prompt)]
    plan = GenerationPlan(
        model,
        prompt,
        generation.chat_prompt_tokens([("user", prompt)]),
        options,
        keep_alive=None,
        seed=options.get("seed"),
        rendered=render_chat(user),
    )
    gen = await _generate(request, plan)
    ident = f"cmpl-{_ids.randrange(999)}"
    created = node.clock.wall_ns() // 10**9
    head = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": name,
        "system_fingerprint": "fp_ollama",
    }
    usage = (doc.get("stream_options") or {}).get("include_usage")
    zero = (
        {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}} if usage else {}
    )
    try:
        async with contextlib.aclosing(gen.stream()) as tokens:
            if not doc.get("stream"):
                async for _ in tokens:
                    pass
                choice = {"text": gen.text, "index": 0, "finish_reason": _finish(gen)}
                return json_response({**head, "choices": [choice], "usage": _usage(gen)})
            out = ChunkStream(request, SSE)
            async for token in tokens:
                choice = {"text": token, "index": 0, "finish_reason": None}
                await out.write(_sse({**head, "choices": [choice], **zero}))
        choice = {"text": "", "index": 0, "finish_reason": _finish(gen)}
        await out.write(_sse({**head, "choices": [choice], **zero}))
        if usage:
            await out.write(_sse({**head, "choices": [], "usage": _usage(gen)}))
        await out.write(b"data: [DONE]\n\n")
        return await out.finish()
    finally:
        gen.release()


@routes.post("/v1/embeddings")
async def v1_embeddings(request: web.Request) -> web.Response:
    node = request.app[NODE]
    doc = await read_json(request, "openai.EmbedRequest")
    raw = doc.get("input")
    if raw == "":
        raw = [""]
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise ApiError(400, "invalid input")
    encoding = doc.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"invalid encoding format: {encoding}")
    name = doc.get("model") or ""
    model = embedding_model(node.library, name)
    vectors, _, tokens = await embed_texts(node, model, list(raw), options={}, keep_alive=None)
    data = []
    for index, vector in enumerate(vectors):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": index})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": "list", "data": data, "model": name, "usage": usage})


def _model_entry(model: LibraryEntry, ident: str) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "model",
        "created": model.modified_ns // 10**9,
        "owned_by": model.name.namespace,
    }


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    installed = request.app[NODE].library.models()
    # A nil slice in Go: no models gives "data": null.
    data = [_model_entry(m, m.display) for m in installed] or None
    return json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model}")
async def model(request: web.Request) -> web.Response:
    ident = request.match_info["model"]
    found = request.app[NODE].library.find(ident)
    if found is None:
        from ollama_wire import names

        try:
            shown = names.display(ident)
        except names.InvalidModelName:
            shown = ident
        raise ApiError(404, f"model '{shown}' not found")
    return json_response(_model_entry(found, ident))


def _responses_input(doc: dict[str, Any]) -> list[tuple[str, str]]:
    turns = [("system", str(doc["instructions"]))] if doc.get("instructions") else []
    raw = doc.get("input")
    if isinstance(raw, str):
        return [*turns, ("user", raw)]
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict):
            turns.append((str(item.get("role", "user")), _text(item.get("content"))))
    return turns


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    """Stateless Responses API: ``event:`` + ``data:`` frames, no ``[DONE]`` (ollama.md §2.6)."""
    node = request.app[NODE]
    request[STARTED] = node.clock.monotonic()
    doc = await read_json(request, "openai.ResponsesRequest")
    name = doc.get("model") or ""
    if not name:
        raise ApiError(400, "model is required")
    model = completion_model(node.library, name, "chat")
    turns = _responses_input(doc)
    if not turns:
        raise ApiError(400, "input is required")
    if isinstance(doc.get("max_output_tokens"), int):
        doc = {**doc, "max_tokens": doc["max_output_tokens"]}
    gen = await _generate(request, _chat(doc, model, [Turn(role, text) for role, text in turns]))
    n = _ids.randrange(999)
    created = node.clock.wall_ns() // 10**9
    resp_id, msg_id = f"resp_{n}", f"msg_{n}"

    def item(text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": []}
        return {
            "id": msg_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"id": resp_id, "object": "response", "created_at": created, "status": status}
        body |= {"model": name, "output": output}
        if status == "completed":
            prompt_n, out_n = gen.plan.prompt_tokens, len(gen.tokens)
            body["usage"] = {
                "input_tokens": prompt_n,
                "output_tokens": out_n,
                "total_tokens": prompt_n + out_n,
            }
        return body

    try:
        async with contextlib.aclosing(gen.stream()) as tokens:
            if not doc.get("stream"):
                async for _ in tokens:
                    pass
                return json_response(response("completed", [item(gen.text, "completed")]))
            out = ChunkStream(
                request, SSE, {"Cache-Control": "no-cache", "Connection": "keep-alive"}
            )
            seq = 0

            async def event(kind: str, **data: Any) -> None:
                nonlocal seq
                payload = {"type": kind, **data, "sequence_number": seq}
                seq += 1
                await out.write(f"event: {kind}\n".encode() + _sse(payload))

            await event("response.created", response=response("in_progress", []))
            await event("response.in_progress", response=response("in_progress", []))
            empty = item("", "in_progress")
            empty["content"] = []
            await event("response.output_item.added", output_index=0, item=empty)
            part = {"type": "output_text", "text": "", "annotations": []}
            await event(
                "response.content_part.added",
                item_id=msg_id,
                output_index=0,
                content_index=0,
                part=part,
            )
            async for token in tokens:
                await event(
                    "response.output_text.delta",
                    item_id=msg_id,
                    output_index=0,
                    content_index=0,
                    delta=token,
                )
        text = gen.text
        await event(
            "response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=text
        )
        part = {"type": "output_text", "text": text, "annotations": []}
        await event(
            "response.content_part.done", item_id=msg_id, output_index=0, content_index=0, part=part
        )
        await event("response.output_item.done", output_index=0, item=item(text, "completed"))
        await event("response.completed", response=response("completed", [item(text, "completed")]))
        return await out.finish()
    finally:
        gen.release()
