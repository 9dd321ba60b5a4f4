"""Benchmark 3b, routing for the prompt cache: multi-turn conversations whose turns share a
growing prefix (``python -m bench routing --conversations``).

Each conversation is what a coding agent sends: one long system prompt (the same for all,
like an agent's instructions and tools), a first user turn, then turn after turn the
whole history plus one more exchange, so turn *k* repeats turn *k-1*'s prompt and adds to
it.  Half the conversations open with the same first user turn (agents started on the same
task: ``/init``, "fix the failing tests"), half with their own.  All run at once, each turn
after the previous one's answer, through the balancer to a fleet of emulated pods with
the model resident on every pod.

Set-ups, on the same seeded trace:

* ``no affinity``: routing by load alone (``--no-affinity``);
* ``opening hash``: affinity from a hash of the opening (what a client that names nothing
  gets: conversations with the same opening land together, their pod spills when busy);
* ``session header``: every request carries its session id the way Claude Code does
  (``X-Claude-Code-Session-Id``); ``prompt_cache_key`` and Codex's ``session_id`` go the
  same way (README "Conversation affinity").

Measured: *stickiness* (turns served by the pod of the conversation's previous turn) and,
where the emulator keeps a per-slot prompt cache (its ``stats.prompt_tokens_cached``),
the *prefix-cache hit ratio* (prompt tokens a slot's cache already held over all prompt
tokens) and the mean ``prompt_eval_duration`` per turn (emulated seconds): what the cache
saves, not just where the turns went.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import common

SETUPS = ("no affinity", "opening hash", "session header")
SESSION_HEADER = "X-Claude-Code-Session-Id"
MODEL = "agent:latest"


@dataclass
class Config:
    nodes: int = 4
    slots: int = 4  # the fleet has a slot per conversation: what is cached is routing's doing
    conversations: int = 16
    turns: int = 6
    system_words: int = 1200  # about 1.6k tokens: an agent's instructions and tools
    turn_words: int = 120
    time_scale: float = 0.05
    prompt_rate: float = 2000.0  # prompt tokens per emulated second (prefill)
    response_tokens: int = 40
    seed: int = 7
    setups: tuple[str, ...] = SETUPS


QUICK = Config(turns=5)
SMOKE = Config(nodes=2, slots=2, conversations=4, turns=3, system_words=200, turn_words=30)


def fleet(cfg: Config) -> dict[str, Any]:
    spec = {
        "name": MODEL,
        "size_bytes": "4GB",
        "load_seconds": 1,
        "tokens_per_second": 60.0,
        "prompt_tokens_per_second": cfg.prompt_rate,
        "response_tokens": cfg.response_tokens,
        "context_length": 32768,
    }
    return {
        "time_scale": cfg.time_scale,
        "catalogue": [spec],
        "nodes": [
            {
                "name": f"node-{i}",
                "host": "127.0.0.1",
                "port": 0,
                "vram": "24GiB",
                "num_parallel": cfg.slots,
                "max_queue": 512,
                "context_length": 32768,
                "loaded": [MODEL.split(":")[0]],
            }
            for i in range(cfg.nodes)
        ],
    }


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


@dataclass
class Conversation:
    session: str
    opening: str
    turns: list[str]
    pods: list[str] = field(default_factory=list)
    prompt_eval_seconds: list[float] = field(default_factory=list)


def make_conversations(cfg: Config) -> tuple[str, list[Conversation]]:
    rng = random.Random(cfg.seed)
    system = _words(rng, cfg.system_words)
    shared_opening = "Fix the failing tests. " + _words(rng, cfg.turn_words)
    out = []
    for c in range(cfg.conversations):
        opening = shared_opening if c % 2 == 0 else _words(rng, cfg.turn_words)
        turns = [_words(rng, cfg.turn_words) for _ in range(cfg.turns - 1)]
        out.append(Conversation(f"session-{cfg.seed}-{c}", opening, turns))
    return system, out


async def _converse(
    session: aiohttp.ClientSession,
    url: str,
    system: str,
    conv: Conversation,
    send_session: bool,
    time_scale: float,
) -> None:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": conv.opening},
    ]
    headers = {SESSION_HEADER: conv.session} if send_session else {}
    for turn in [None, *conv.turns]:
        if turn is not None:
            messages.append({"role": "user", "content": turn})
        body = {"model": MODEL, "messages": messages, "stream": False}
        async with session.post(url + "/api/chat", json=body, headers=headers) as resp:
            doc = await resp.json()
            assert resp.status == 200, doc
            conv.pods.append(resp.headers.get("X-Ollama-Backend", ""))
        duration = doc.get("prompt_eval_duration") or 0
        conv.prompt_eval_seconds.append(duration / 1e9)
        messages.append(doc["message"])


def _stats(urls: list[str]) -> dict[str, int]:
    total: dict[str, int] = {}
    for u in urls:
        stats = json.loads(common.http_get(u + "/-/emulator/state")[1])["stats"]
        for key in ("prompt_tokens", "prompt_tokens_cached"):
            if isinstance(stats.get(key), int):
                total[key] = total.get(key, 0) + stats[key]
    return total


def run_one(cfg: Config, setup: str) -> dict[str, Any]:
    system, conversations = make_conversations(cfg)
    with common.workspace("conversations") as (_tmp, procs):
        urls = common.start_emulator(procs, fleet(cfg))
        extra = ["--poll-interval", str(max(0.05, 2.0 * cfg.time_scale))]
        if setup == "no affinity":
            extra.append("--no-affinity")
        _proc, base = common.start_balancer(
            procs, urls, extra=extra, backend_opts=f";slots={cfg.slots}"
        )
        before = _stats(urls)

        async def everyone() -> None:
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await asyncio.gather(
                    *(
                        _converse(
                            session, base, system, c, setup == "session header", cfg.time_scale
                        )
                        for c in conversations
                    )
                )

        asyncio.run(everyone())
        after = _stats(urls)
    follow = [c.pods[i] == c.pods[i - 1] for c in conversations for i in range(1, len(c.pods))]
    row: dict[str, Any] = {
        "setup": setup,
        "turns": sum(len(c.pods) for c in conversations),
        "stickiness": sum(follow) / len(follow) if follow else 0.0,
        "prompt_eval_mean": statistics.fmean(
            s for c in conversations for s in c.prompt_eval_seconds[1:]
        ),
    }
    prompt = after.get("prompt_tokens", 0) - before.get("prompt_tokens", 0)
    if "prompt_tokens_cached" in after and prompt > 0:
        cached = after["prompt_tokens_cached"] - before.get("prompt_tokens_cached", 0)
        row["cache_hit_ratio"] = cached / prompt
    return row


def run(cfg: Config) -> dict[str, Any]:
    rows = [run_one(cfg, setup) for setup in cfg.setups]
    return {"config": cfg.__dict__, "rows": rows}


HEADERS = ["set-up", "turns", "same pod as the last turn", "prefix-cache hits", "prompt eval s"]


def render(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["rows"]:
        hits = r.get("cache_hit_ratio")
        rows.append(
            [
                r["setup"],
                r["turns"],
                f"{r['stickiness']:.0%}",
                f"{hits:.0%}" if hits is not None else "n/a (no prompt cache)",
                f"{r['prompt_eval_mean']:.3f}",
            ]
        )
    return common.table(HEADERS, rows)
