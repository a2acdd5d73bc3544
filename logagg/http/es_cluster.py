"""What an Elasticsearch client asks besides `_bulk`, under `/es`, answered minimally so
that no shipper's start-up or health check fails: the version (`GET /es/`, as a recent
8.x), the license, `_xpack`, cluster health (green while the writer can write, red while
it cannot), and templates, policies, pipelines and data streams (a question about one is
`404`, setting one up is acknowledged: nothing of it is applied). Every answer carries
`X-Elastic-Product: Elasticsearch`, which the official clients check.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from logagg import __version__
from logagg.http.service import Service

PREFIX = "/es"
VERSION = "8.19.0"  # the Elasticsearch version answered: shippers of 8.x accept it
LUCENE_VERSION = "9.12.2"
CLUSTER = "logagg"
CLUSTER_UUID = "bG9nYWdnLWxvZ2FnZy1sb2dh"
PRODUCT = {"X-Elastic-Product": "Elasticsearch"}
COMPATIBLE = "application/vnd.elasticsearch+json;compatible-with=8"
SETUP_PATHS = (
    "_index_template/",
    "_template/",
    "_component_template/",
    "_ilm/policy/",
    "_ingest/pipeline/",
    "_data_stream/",
)


def answer(
    request: Request, doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer with Elasticsearch's product header (and its compatible media type
    when the client asked for it)."""
    accept = request.headers.get("accept", "")
    media = COMPATIBLE if "vnd.elasticsearch" in accept else "application/json"
    return Response(
        orjson.dumps(doc),
        status_code=status,
        media_type=media,
        headers={**PRODUCT, **(headers or {})},
    )


def error(
    request: Request,
    status: int,
    kind: str,
    reason: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in Elasticsearch's shape."""
    cause = {"type": kind, "reason": reason}
    doc = {"error": {"root_cause": [cause], **cause}, "status": status}
    return answer(request, doc, status, headers)


def info() -> dict[str, Any]:
    return {
        "name": CLUSTER,
        "cluster_name": CLUSTER,
        "cluster_uuid": CLUSTER_UUID,
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "logagg",
            "build_hash": f"logagg-{__version__}",
            "build_date": "2025-01-01T00:00:00.000Z",
            "build_snapshot": False,
            "lucene_version": LUCENE_VERSION,
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }


LICENSE = {
    "status": "active",
    "uid": "00000000-0000-0000-0000-000000000000",
    "type": "basic",
    "issue_date": "2025-01-01T00:00:00.000Z",
    "issue_date_in_millis": 1735689600000,
    "max_nodes": 1000,
    "max_resource_units": None,
    "issued_to": CLUSTER,
    "issuer": "elasticsearch",
    "start_date_in_millis": -1,
}


# --- routes --------------------------------------------------------------------------------


def register(app: FastAPI, service: Service) -> None:
    """Add the answers to what clients ask before sending (the last route takes every
    other `/es` path: register `_bulk` first)."""

    @app.api_route(PREFIX, methods=["GET", "HEAD"], include_in_schema=False)
    @app.api_route(PREFIX + "/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root(request: Request) -> Response:
        return answer(request, info())

    @app.get(PREFIX + "/_license", include_in_schema=False)
    async def license_(request: Request) -> Response:
        return answer(request, {"license": LICENSE})

    @app.get(PREFIX + "/_xpack", include_in_schema=False)
    async def xpack(request: Request) -> Response:
        doc = {
            "build": {"hash": f"logagg-{__version__}", "date": "2025-01-01T00:00:00.000Z"},
            "license": {k: LICENSE[k] for k in ("uid", "type", "status")} | {"mode": "basic"},
            "features": {},
        }
        return answer(request, doc)

    def health() -> dict[str, Any]:
        return {
            "cluster_name": CLUSTER,
            "status": "green" if service.writing else "red",
            "timed_out": False,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": 1,
            "active_shards": 1,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0,
        }

    @app.get(PREFIX + "/_cluster/health", include_in_schema=False)
    @app.get(PREFIX + "/_cluster/health/{index}", include_in_schema=False)
    async def cluster_health(request: Request) -> Response:
        return answer(request, health())

    @app.get(PREFIX + "/_cat/health", include_in_schema=False)
    async def cat_health(request: Request) -> Response:
        doc = health()
        now = time.time()
        row = {
            "epoch": str(int(now)),
            "timestamp": time.strftime("%H:%M:%S", time.gmtime(now)),
            "cluster": CLUSTER,
            "status": doc["status"],
            "node.total": "1",
            "node.data": "1",
        }
        if request.query_params.get("format") == "json":
            return answer(request, [row])
        text = " ".join(row.values()) + "\n"
        return Response(text, media_type="text/plain; charset=UTF-8", headers=PRODUCT)

    @app.api_route(
        PREFIX + "/{path:path}", methods=["GET", "HEAD", "PUT", "POST"], include_in_schema=False
    )
    async def other(request: Request, path: str) -> Response:
        """What else a shipper asks before sending: a question about templates, policies,
        pipelines, data streams or an index is answered `not found`, and setting one up is
        acknowledged (nothing of it is applied: documents are stored as they are sent).
        Anything else that writes is refused, so that nothing is acknowledged unstored."""
        if request.method in ("GET", "HEAD"):
            return error(
                request, 404, "resource_not_found_exception", f"[{path[:200]}] is not kept"
            )
        if path.startswith(SETUP_PATHS) or (request.method == "PUT" and _index_name(path)):
            return answer(request, {"acknowledged": True})
        return error(
            request,
            400,
            "illegal_argument_exception",
            f"{request.method} /{path[:200]} is not supported by logagg: send documents to"
            f" {PREFIX}/_bulk",
        )


def _index_name(path: str) -> bool:
    """True for the name of an index alone (`PUT /{index}` creates one)."""
    name = path.strip("/")
    return bool(name) and "/" not in name and not name.startswith(("_", "-", "+"))
