"""Every Prometheus metric Callbridge exports, served at GET /metrics.

Two kinds, kept in two registries:
- What this process did (requests, Exotel calls, callbacks, deliveries): counters and
  histograms in the process-wide default registry, next to prometheus-client's process
  and GC metrics. Every process exports its own; `sum()` them across the fleet.
- What the database holds (queues, backlogs): the same number seen from any process.
  These FLEET gauges are exported only by processes that run the jobs (`callbridge
  worker`, or an API process with RUN_JOBS=true), so that an API replica never adds
  a copy; where several processes run jobs, aggregate them with `max()`, never `sum()`.

Labels only ever take values from small, fixed sets (route templates, operations,
statuses), so no label can grow without bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.exotel.schemas import TERMINAL_STATUSES

HTTP_REQUESTS = Counter(
    "callbridge_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "callbridge_http_request_duration_seconds",
    "Time from receiving an HTTP request to sending the end of its response.",
    ["method", "route"],
)

EXOTEL_REQUESTS = Counter(
    "callbridge_exotel_requests_total",
    "Requests to Exotel, by operation and outcome (ok, error, unreachable, no_answer;"
    " throttled: not sent, Callbridge's own limit was reached).",
    ["operation", "outcome"],
)
EXOTEL_REQUEST_DURATION = Histogram(
    "callbridge_exotel_request_duration_seconds",
    "Latency of requests to Exotel, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30),
)

CALLBACKS = Counter(
    "callbridge_callbacks_total",
    "Exotel status callbacks received, by outcome (stored, or the problem that refused it).",
    ["outcome"],
)
CALLBACKS_APPLIED = Counter(
    "callbridge_callbacks_applied_total",
    "Stored callbacks the applier processed, by outcome (applied: it changed the call;"
    " conflicting: it named a terminal status other than the finished call's, not applied).",
    ["outcome"],
)
CALLBACK_APPLY_LAG = Histogram(
    "callbridge_callback_apply_lag_seconds",
    "Time from storing (acknowledging) a callback to applying it to its call.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CALL_STATUS_TRANSITIONS = Counter(
    "callbridge_call_status_transitions_total",
    "Changes of a stored call's status.",
    ["from_status", "to_status"],
)

FLEET = CollectorRegistry()

RELAY_QUEUE_DEPTH = Gauge(
    "callbridge_relay_queue_depth",
    "Notifications (call.finished, call.updated) waiting to be delivered to their notify_url"
    " (fleet-wide: aggregate with max()).",
    registry=FLEET,
)
RELAY_FAILURES = Counter(
    "callbridge_relay_failures_total",
    "Failed attempts to deliver a finished-call notification.",
)
RECONCILE_BACKLOG = Gauge(
    "callbridge_reconcile_backlog",
    "Calls due to be looked up at Exotel by the reconciler (fleet-wide: aggregate with max()).",
    registry=FLEET,
)
CALLBACK_BACKLOG = Gauge(
    "callbridge_callback_backlog",
    "Stored callbacks waiting for the applier (fleet-wide: aggregate with max()).",
    registry=FLEET,
)
RECONCILE_OUTCOMES = Counter(
    "callbridge_reconcile_outcomes_total",
    "Reconciler looks at a call, by outcome (ambiguous: more than one Exotel call could be it).",
    ["outcome"],
)

DETAILS_OUTCOMES = Counter(
    "callbridge_details_outcomes_total",
    "Finished calls looked up for the figures Exotel fills in later (price, duration), by "
    "outcome (waiting: not there yet; gave_up: never came).",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "callbridge_rate_limited_total",
    "POST /calls requests refused with 429, by API client.",
    ["client"],
)

CALL_STATUSES = frozenset({"pending", "unknown", "queued", "in-progress"}) | TERMINAL_STATUSES


def status_label(status: str) -> str:
    """The status as a label value; Exotel may invent words, and a label must stay bounded."""
    return status if status in CALL_STATUSES else "other"


def record_status_change(previous: str, current: str) -> None:
    if previous != current:
        CALL_STATUS_TRANSITIONS.labels(status_label(previous), status_label(current)).inc()
