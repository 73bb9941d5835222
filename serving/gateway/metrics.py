"""Prometheus metrics of the gateway (process-wide, like the default registry they live in)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
