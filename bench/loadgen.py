"""The load generator: ``python -m bench.loadgen SPEC.json OUT.json``, always its own process.

Four modes, every one bounded in request count and in wall time:

* ``closed``: ``requests`` POSTs at fixed ``concurrency`` (after ``warmup`` unrecorded ones);
  records each latency.
* ``stream``: ``streams`` concurrent streaming requests; records every line's arrival, so
  inter-chunk gaps are per NDJSON/SSE line, not per TCP read.
* ``trace``: open loop: request ``i`` starts at ``t0 + at[i]`` whatever happened before
  (Poisson arrivals come from the caller's seeded trace); records TTFT and end-to-end.
  An item may carry its own ``headers`` (a tenant's key, ``X-Priority``) and ``tags``
  (copied into its record, so results can be split by tenant or class).  A record says
  whether the stream ended as a whole OpenAI stream does (``complete``: ``data: [DONE]``
  seen), which pod and which front upstream served it (``X-Ollama-Backend``,
  ``X-Upstream``), and when it ended.  With ``start_at`` (a ``time.time()`` value) the
  trace's clock starts then, so another process can act at known trace times.
* ``tenants``: closed loops per tenant: each group of ``concurrency`` clients sends streamed
  OpenAI chats to its own ``url`` with its own ``headers`` until ``duration`` runs out, each
  prompt opening with ``request <i> from <tenant>:`` (how :mod:`bench.slot_time` joins the
  emulator's generation records to tenants); records each request's start, TTFT and end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from ollama_wire.loop import run as run_loop

#: Answer headers a trace record keeps: the wait, the scheduler's estimate of it at arrival,
#: which replica answered, and a refusal's Retry-After.
_HEADERS = {
    "X-Queue-Wait": "queue_wait",
    "X-Queue-Estimate": "queue_estimate",
    "Retry-After": "retry_after",
}


def _session(limit: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def closed(spec: dict[str, Any]) -> dict[str, Any]:
    url, body = spec["url"], json.dumps(spec["body"]).encode()
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    conc = spec["concurrency"]
    deadline = time.monotonic() + spec["duration"]
    lat: list[float] = []
    errors: dict[str, int] = {}
    async with _session(conc, spec.get("timeout", 30)) as http:

        async def phase(count: int, record: bool) -> None:
            left = count

            async def worker() -> None:
                nonlocal left
                while left > 0 and time.monotonic() < deadline:
                    left -= 1
                    t = time.perf_counter()
                    try:
                        async with http.post(url, data=body, headers=headers) as r:
                            await r.read()
                            ok, key = r.status == 200, str(r.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        ok, key = False, type(exc).__name__
                    if not record:
                        continue
                    if ok:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors[key] = errors.get(key, 0) + 1

            await asyncio.gather(*(worker() for _ in range(conc)))

        # Warm-up at the same concurrency (connections, caches); timing starts after it.
        await phase(spec.get("warmup", 0), record=False)
        start = time.perf_counter()
        await phase(spec["requests"], record=True)
        elapsed = time.perf_counter() - start
    return {"latencies": lat, "errors": errors, "elapsed": elapsed, "completed": len(lat)}


async def _read_stream(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, list[float], str | None]:
    """(start, arrival times of content lines, error)."""
    t0 = time.perf_counter()
    arrivals: list[float] = []
    try:
        async with http.post(url, data=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return t0, arrivals, str(r.status)
            while True:
                line = await r.content.readline()
                if not line:
                    break
                line = line.strip()
                if not line or line == b"data: [DONE]":
                    continue
                arrivals.append(time.perf_counter())
    except (aiohttp.ClientError, TimeoutError) as exc:
        return t0, arrivals, type(exc).__name__
    return t0, arrivals, None


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    url, body = spec["url"], json.dumps(spec["body"]).encode()
    headers = {"Content-Type": "application/json"}
    n = spec["streams"]
    async with _session(n, spec["duration"]) as http:
        # Ramp: open the streams over ramp seconds so they do not tick in lock-step.
        ramp = spec.get("ramp", 1.0)

        async def one(i: int) -> tuple[float, list[float], str | None]:
            await asyncio.sleep(ramp * i / n)
            return await _read_stream(http, url, body, headers)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    gaps: list[float] = []
    ttft: list[float] = []
    chunks = 0
    errors: dict[str, int] = {}
    first, last = float("inf"), 0.0
    for t0, arr, err in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
        if not arr:
            continue
        chunks += len(arr)
        ttft.append(arr[0] - t0)
        # The last line carries the final stats (sent right after the last token): skip it.
        gaps += [b - a for a, b in itertools.pairwise(arr[:-1])]
        first, last = min(first, arr[0]), max(last, arr[-1])
    return {
        "gaps": gaps,
        "ttft": ttft,
        "chunks": chunks,
        "elapsed": elapsed,
        "span": max(0.0, last - first),
        "errors": errors,
    }


async def trace(spec: dict[str, Any]) -> dict[str, Any]:
    url = spec["url"]
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    items = spec["trace"]
    out: list[dict[str, Any]] = [{} for _ in items]
    async with _session(4096, spec["timeout"]) as http:
        if "start_at" in spec:
            await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        t0 = time.perf_counter()

        async def one(i: int, item: dict[str, Any]) -> None:
            delay = t0 + item["at"] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {
                "model": item["model"],
                "messages": [{"role": "user", "content": item["prompt"]}],
                "stream": True,
                "max_tokens": item["max_tokens"],
            }
            start = time.perf_counter()
            rec: dict[str, Any] = {
                "at": start - t0,
                "model": item["model"],
                **item.get("tags", {}),
            }
            try:
                async with http.post(
                    url, json=body, headers={**headers, **item.get("headers", {})}
                ) as r:
                    rec["status"] = r.status
                    rec["backend"] = r.headers.get("X-Ollama-Backend", "")
                    rec["upstream"] = r.headers.get("X-Upstream", "")
                    for header, key in _HEADERS.items():
                        if header in r.headers:
                            rec[key] = r.headers[header]
                    if r.status == 200:
                        while True:
                            line = await r.content.readline()
                            if not line:
                                break
                            if line.startswith(b"data: {") and "ttft" not in rec:
                                rec["ttft"] = time.perf_counter() - start
                            elif line.startswith(b"data: [DONE]"):
                                rec["complete"] = True
                    else:
                        await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec["status"] = type(exc).__name__
            rec["e2e"] = time.perf_counter() - start
            rec["end"] = rec["at"] + rec["e2e"]
            rec["ok"] = rec.get("status") == 200 and "ttft" in rec
            out[i] = rec

        await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))
        elapsed = time.perf_counter() - t0
    return {"records": out, "elapsed": elapsed}


async def tenants(spec: dict[str, Any]) -> dict[str, Any]:
    groups = spec["groups"]
    out: list[dict[str, Any]] = []
    counter = itertools.count()
    filler = "lorem ipsum " * 4096
    limit = sum(int(g["concurrency"]) for g in groups)
    async with _session(limit, spec["timeout"]) as http:
        t0 = time.perf_counter()
        deadline = t0 + spec["duration"]

        async def client(g: dict[str, Any]) -> None:
            headers = {"Content-Type": "application/json", **g.get("headers", {})}
            while time.perf_counter() < deadline:
                i = next(counter)
                # The emulator counts prompt tokens as characters / 4.
                prompt = (f"request {i} from {g['tenant']}: " + filler)[: 4 * g["prompt_tokens"]]
                body = {
                    "model": g["model"],
                    "messages": [{"role": "user", "content": prompt}],
                    "stream": True,
                    "max_tokens": g["max_tokens"],
                }
                start = time.perf_counter()
                rec: dict[str, Any] = {"request": i, "tenant": g["tenant"], "at": start - t0}
                try:
                    async with http.post(g["url"], json=body, headers=headers) as r:
                        rec["status"] = r.status
                        if r.status == 200:
                            while True:
                                line = await r.content.readline()
                                if not line:
                                    break
                                if line.startswith(b"data: {") and "ttft" not in rec:
                                    rec["ttft"] = time.perf_counter() - start
                        else:
                            await r.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    rec["status"] = type(exc).__name__
                rec["e2e"] = time.perf_counter() - start
                rec["ok"] = rec.get("status") == 200 and "ttft" in rec
                out.append(rec)

        await asyncio.gather(*(client(g) for g in groups for _ in range(int(g["concurrency"]))))
        elapsed = time.perf_counter() - t0
    return {"records": out, "elapsed": elapsed}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    modes = {"closed": closed, "stream": stream, "trace": trace, "tenants": tenants}
    mode = modes[spec["mode"]]
    # uvloop (as the balancer): the load generator shares a CPU with the emulator; the
    # less it spends per request and per line, the less it disturbs what it measures.
    result = run_loop(asyncio.wait_for(mode(spec), spec.get("hard_timeout", 900)))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
