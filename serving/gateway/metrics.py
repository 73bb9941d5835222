"""Prometheus metrics of the gateway (process-wide, like the default registry they live in).

Requests are labelled by route template (``/v1/segment``, ``/static``), never by the path a
client sent: every path that matches no route counts as ``unmatched``, so clients cannot grow
the number of series."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from s4seg.quality import Quality

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


# How far the answers can be trusted, per served version (``s4seg.quality``): a model drifting
# out of its calibrated regime answers with lower confidence and more uncertain pixels
# (docs/serving.md has an alert rule).
SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
ANSWER_CONFIDENCE = Histogram(
    "s4seg_answer_confidence",
    "mean top-class probability of an answer (calibrated when the export measured it)",
    ["version"],
    buckets=SHARES,
)
ANSWER_UNCERTAIN = Histogram(
    "s4seg_answer_uncertain_share",
    "share of an answer's pixels whose prediction set holds more than one class",
    ["version"],
    buckets=SHARES,
)
ANSWER_DISAGREEING = Histogram(
    "s4seg_answer_disagreeing_classes",
    "classes the classifier and the segmenter disagree on, per answer",
    ["version"],
    buckets=(0, 1, 2, 3, 5, 8),
)


def record_quality(version: str, quality: Quality) -> None:
    ANSWER_CONFIDENCE.labels(version).observe(quality.mean_confidence)
    if quality.uncertain_share is not None:
        ANSWER_UNCERTAIN.labels(version).observe(quality.uncertain_share)
    if quality.disagreeing is not None:
        ANSWER_DISAGREEING.labels(version).observe(len(quality.disagreeing))
