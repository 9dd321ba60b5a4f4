"""Native ``/api/*`` handlers (docs/ollama.md §2.2–2.4, §4)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ollama_wire import OLLAMA_VERSION, names

from . import generation
from .continuation import Turn, render_chat, split_raw
from .inference import (
    Generation,
    GenerationPlan,
    chat_plan,
    check_options,
    completion_model,
    embed_texts,
    embedding_model,
    keep_alive_of,
    schedule,
    truncate_dimensions,
)
from .keys import NODE
from .registry import LibraryEntry, PullError
from .streams import ApiError, ChunkStream, expect, json_response, read_json
from .wire import go_json, ps_entry, rfc3339, show_response, tags_entry

__all__ = ["routes"]

NDJSON = "application/x-ndjson"
routes = web.RouteTableDef()


def _now(request: web.Request) -> str:
    return rfc3339(request.app[NODE].clock.wall_ns())


def _full_name(model: LibraryEntry) -> str:
    n = model.name
    return f"{n.host}/{n.namespace}/{n.model}:{n.tag}"


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_VERSION})


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return json_response({"models": [tags_entry(m) for m in node.library.models()]})


@routes.get("/api/ps", allow_head=False)
async def ps(request: web.Request) -> web.Response:
    runners = request.app[NODE].scheduler.runners.values()
    ordered = sorted(runners, key=lambda r: r.expires_at_ns, reverse=True)
    return json_response({"models": [ps_entry(r) for r in ordered]})


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    doc = await read_json(request, "api.ShowRequest")
    name = doc.get("model") or doc.get("name") or ""
    if not name:
        raise ApiError(400, "model is required")
    try:
        shortest = names.display(name)
    except names.InvalidModelName:
        raise ApiError(400, "invalid model name") from None
    model = request.app[NODE].library.find(name)
    if model is None:
        raise ApiError(404, f"model '{shortest}' not found")
    return json_response(show_response(model))


def _check_think(doc: dict[str, Any], model: LibraryEntry, name: str) -> None:
    think = doc.get("think")
    if think in (None, False):
        return
    if isinstance(think, str) and think not in ("low", "medium", "high", "max"):
        raise ApiError(400, f'invalid think value: "{think}" (must be "high", "medium", "low")')
    if "thinking" not in model.spec.capabilities:
        raise ApiError(400, f'"{name}" does not support thinking')


async def _load_only(
    request: web.Request, model: LibraryEntry, doc: dict[str, Any], body: dict[str, Any]
) -> web.Response:
    """Empty prompt/messages: load, or with keep_alive 0 unload at once (ollama.md §4.2, §4.3)."""
    node = request.app[NODE]
    keep_alive = keep_alive_of(doc)
    name = doc["model"]
    if keep_alive == 0:
        node.scheduler.expire(model.spec)
        return json_response(
            {
                "model": name,
                "created_at": _now(request),
                **body,
                "done": True,
                "done_reason": "unload",
            }
        )
    options = check_options(doc.get("options"))
    runner = await schedule(node, model, num_ctx=options.get("num_ctx"), keep_alive=keep_alive)
    node.scheduler.release(runner)
    return json_response(
        {"model": name, "created_at": _now(request), **body, "done": True, "done_reason": "load"}
    )


async def _run(
    request: web.Request,
    gen: Generation,
    stream: bool,
    chunk: Any,
    final: Any,
) -> web.StreamResponse:
    """Play a generation as NDJSON (``stream``) or as one object; always frees the runner."""
    await gen.schedule()
    try:
        async with contextlib.aclosing(gen.stream()) as tokens:
            if not stream:
                async for _ in tokens:
                    pass
                return json_response(final(gen.text))
            out = ChunkStream(request, NDJSON)
            async for token in tokens:
                await out.write(go_json(chunk(token)) + b"\n")
        await out.write(go_json(final("")) + b"\n")
        return await out.finish()
    finally:
        gen.release()


def _generate_plan(
    model: LibraryEntry,
    doc: dict[str, Any],
    prompt: str,
    options: dict[str, Any],
    keep_alive: float | None,
) -> GenerationPlan:
    """A generate request: templated as a user turn, or raw (where a partial answer may end it)."""
    seed = options.get("seed")
    system = doc.get("system") or ""
    if doc.get("raw") is True:
        spec = model.spec

        def answer_for(text: str) -> Iterator[str]:
            base = generation.seed_for(seed, spec.digest, system + text)
            return generation.iter_tokens(base, spec.response_tokens)

        head, said = split_raw(prompt, answer_for)
        return GenerationPlan(
            model=model,
            prompt_text=system + head,
            prompt_tokens=generation.count_tokens(head) + generation.answer_tokens(said),
            options=options,
            keep_alive=keep_alive,
            seed=seed,
            rendered=prompt,
            partial=Turn("assistant", said) if said else None,
        )
    turns = [Turn("system", system)] if system else []
    turns.append(Turn("user", prompt))
    return GenerationPlan(
        model=model,
        prompt_text=system + prompt,
        prompt_tokens=generation.chat_prompt_tokens([(t.role, t.content) for t in turns]),
        options=options,
        keep_alive=keep_alive,
        seed=seed,
        rendered=render_chat(turns),
    )


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    started = node.clock.monotonic()
    doc = await read_json(request, "api.GenerateRequest")
    fields = [("model", str, "string"), ("prompt", str, "string"), ("system", str, "string")]
    for key, kind, go in [*fields, ("stream", bool, "bool"), ("raw", bool, "bool")]:
        expect(doc, key, kind, "GenerateRequest", go)
    keep_alive = keep_alive_of(doc)
    name = doc.get("model") or ""
    model = completion_model(node.library, name, "generate")
    _check_think(doc, model, name)
    prompt = doc.get("prompt") or ""
    if not prompt and not doc.get("images"):
        return await _load_only(request, model, doc, {"response": ""})
    options = check_options(doc.get("options"))
    plan = _generate_plan(model, doc, prompt, options, keep_alive)
    gen = Generation(node, plan, started)

    def final(text: str) -> dict[str, Any]:
        body = {"model": name, "created_at": _now(request), "response": text, "done": True}
        body["done_reason"] = gen.done_reason
        if doc.get("raw") is not True:  # Ollama tokenizes prompt + answer only when templated
            seed = generation.seed_for(plan.seed, model.spec.digest, plan.prompt_text)
            body["context"] = generation.context_ids(seed, plan.prompt_tokens + len(gen.tokens))
        return body | gen.metrics()

    def chunk(token: str) -> dict[str, Any]:
        return {"model": name, "created_at": _now(request), "response": token, "done": False}

    return await _run(request, gen, doc.get("stream") is not False, chunk, final)


def _messages(doc: dict[str, Any]) -> list[Turn]:
    expect(doc, "messages", list, "ChatRequest", "[]api.Message")
    out = []
    for message in doc.get("messages") or []:
        if not isinstance(message, dict):
            raise ApiError(
                400,
                f"json: cannot unmarshal {type(message).__name__} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        for key in ("role", "content", "thinking"):
            expect(message, key, str, "ChatRequest.messages", "string")
        role = str(message.get("role") or "").lower()
        content = str(message.get("content") or "")
        out.append(Turn(role, content, str(message.get("thinking") or "")))
    return out


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    started = node.clock.monotonic()
    doc = await read_json(request, "api.ChatRequest")
    for key, kind, go in (("model", str, "string"), ("stream", bool, "bool")):
        expect(doc, key, kind, "ChatRequest", go)
    messages = _messages(doc)
    keep_alive = keep_alive_of(doc)
    name = doc.get("model") or ""
    if not name:
        raise ApiError(400, "model is required")
    model = completion_model(node.library, name, "chat")
    if doc.get("tools") and "tools" not in model.spec.capabilities:
        raise ApiError(400, f"{_full_name(model)} does not support tools")
    _check_think(doc, model, name)
    empty = {"message": {"role": "assistant", "content": ""}}
    if not messages:
        return await _load_only(request, model, doc, empty)
    options = check_options(doc.get("options"))
    plan = chat_plan(model, messages, options=options, keep_alive=keep_alive)
    gen = Generation(node, plan, started)

    def final(text: str) -> dict[str, Any]:
        body = {"model": name, "created_at": _now(request)}
        body |= {"message": {"role": "assistant", "content": text}, "done": True}
        return body | {"done_reason": gen.done_reason, **gen.metrics()}

    def chunk(token: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": token}
        return {"model": name, "created_at": _now(request), "message": message, "done": False}

    return await _run(request, gen, doc.get("stream") is not False, chunk, final)


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    node = request.app[NODE]
    started = node.clock.monotonic()
    doc = await read_json(request, "api.EmbedRequest")
    keep_alive = keep_alive_of(doc)
    raw = doc.get("input")
    if isinstance(raw, str):
        texts = [raw] if raw else []
    elif isinstance(raw, list):
        if not all(isinstance(item, str) for item in raw):
            raise ApiError(400, "invalid input type")
        texts = list(raw)
    elif raw is None:
        texts = []
    else:
        raise ApiError(400, "invalid input type")
    name = doc.get("model") or ""
    model = embedding_model(node.library, name)
    options = check_options(doc.get("options"))
    if not texts:
        runner = await schedule(node, model, num_ctx=options.get("num_ctx"), keep_alive=keep_alive)
        node.scheduler.release(runner)
        return json_response({"model": name, "embeddings": []})
    t_load = node.clock.monotonic()
    vectors, _, tokens = await embed_texts(
        node,
        model,
        texts,
        options=options,
        keep_alive=keep_alive,
        truncate=doc.get("truncate") is not False,
    )
    load_ns = max(1, int((t_load - started) * 1e9))
    dims = doc.get("dimensions")
    body = {
        "model": name,
        "embeddings": [
            truncate_dimensions(v, dims if isinstance(dims, int) else None) for v in vectors
        ],
        "total_duration": max(1, int((node.clock.monotonic() - started) * 1e9)),
        "load_duration": load_ns,
        "prompt_eval_count": tokens,
    }
    return json_response(body)


@routes.post("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    node = request.app[NODE]
    doc = await read_json(request, "api.EmbeddingRequest")
    keep_alive = keep_alive_of(doc)
    expect(doc, "prompt", str, "EmbeddingRequest", "string")
    model = embedding_model(node.library, doc.get("model") or "")
    options = check_options(doc.get("options"))
    prompt = doc.get("prompt") or ""
    if not prompt:
        runner = await schedule(node, model, num_ctx=options.get("num_ctx"), keep_alive=keep_alive)
        node.scheduler.release(runner)
        return json_response({"embedding": []})
    vectors, _, _ = await embed_texts(node, model, [prompt], options=options, keep_alive=keep_alive)
    return json_response({"embedding": vectors[0]})


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    doc = await read_json(request, "api.PullRequest")
    name = doc.get("model") or doc.get("name") or ""
    try:
        names.parse(name)
    except names.InvalidModelName:
        raise ApiError(400, "invalid model name") from None
    progress = node.puller.pull(name)
    async with contextlib.aclosing(progress):
        if doc.get("stream") is False:
            try:
                async for _ in progress:
                    pass
            except PullError as exc:
                raise ApiError(500, str(exc)) from None
            return json_response({"status": "success"})
        out = ChunkStream(request, NDJSON)
        try:
            async for line in progress:
                await out.write(go_json(line) + b"\n")
        except PullError as exc:
            await out.write(go_json({"error": str(exc)}) + b"\n")
        return await out.finish()


@routes.delete("/api/delete")
async def delete(request: web.Request) -> web.Response:
    doc = await read_json(request, "api.DeleteRequest")
    name = doc.get("model") or doc.get("name") or ""
    try:
        names.parse(name)
    except names.InvalidModelName:
        raise ApiError(400, f'name "{name}" is invalid') from None
    if not request.app[NODE].library.remove(name):
        raise ApiError(404, f"model '{name}' not found")
    return web.Response(status=200)


@routes.post("/api/copy")
async def copy(request: web.Request) -> web.Response:
    doc = await read_json(request, "api.CopyRequest")
    source, destination = doc.get("source") or "", doc.get("destination") or ""
    for label, value in (("source", source), ("destination", destination)):
        try:
            names.parse(value)
        except names.InvalidModelName:
            raise ApiError(400, f'{label} "{value}" is invalid') from None
    library = request.app[NODE].library
    model = library.find(source)
    if model is None:
        raise ApiError(404, f'model "{source}" not found')
    library.install(destination, model.spec)
    return web.Response(status=200)
