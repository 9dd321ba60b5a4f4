"""An OTLP/HTTP trace sink for ``bench proxy --tracing``: receives every span and counts it.

Run as a script (``python bench/otlp_sink.py PORT``) beside the traced balancer, on the
load generators' CPU: ``POST /v1/traces`` decodes each ``ExportTraceServiceRequest`` (so
the exporter does all its real work) and answers an empty ``ExportTraceServiceResponse``;
``GET /count`` says how many export calls and spans arrived.
"""

from __future__ import annotations

import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def app() -> web.Application:
    counts = {"requests": 0, "spans": 0}

    async def traces(request: web.Request) -> web.Response:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        counts["requests"] += 1
        counts["spans"] += sum(
            len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans
        )
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts)

    a = web.Application(client_max_size=64 * 2**20)
    a.router.add_post("/v1/traces", traces)
    a.router.add_get("/count", count)
    return a


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
