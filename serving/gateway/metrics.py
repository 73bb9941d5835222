"""Prometheus metrics of the gateway (process-wide, like the default registry they live in).

Requests are labelled by route template (``/v1/segment``, ``/static``), never by the path a
client sent: every path that matches no route counts as ``unmatched``, so clients cannot grow
the number of series."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "s4seg_gateway_requests_total", "HTTP requests by route and status", ["route", "status"]
)
LATENCY = Histogram(
    "s4seg_gateway_request_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("s4seg_gateway_in_flight_requests", "requests being handled")
TRITON_ERRORS = Counter(
    "s4seg_gateway_triton_errors_total", "failed calls to Triton by kind", ["kind"]
)


UNMATCHED = "unmatched"


ROUTE_KEY = "s4seg.route"  # set by middleware that answers a known route before routing


def route_label(routes: list[BaseRoute], scope: Scope) -> str:
    """The template of the route that handled the request, else unmatched."""
    path = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_KEY)  # FastAPI's routes
    if isinstance(path, str):
        return path
    for route in routes:  # Starlette's own routes (the docs, the static mount)
        path = getattr(route, "path", None)
        if isinstance(path, str) and route.matches(scope)[0] is Match.FULL:
            return path
    return UNMATCHED


class RequestMetrics:
    """Count, time and gauge every HTTP request. Pure ASGI and outermost, so it also counts
    what the limits answer before routing (413, 408, 503)."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            IN_FLIGHT.dec()
            route = route_label(self.routes, scope)
            LATENCY.labels(route).observe(time.perf_counter() - start)
            REQUESTS.labels(route, str(status)).inc()
