"""GET /metrics in the Prometheus text format (prometheus-client writes it).

Job, queue and record figures come from monitor.snapshot(), the same numbers `watch` and
the dashboard show, so they agree whichever server process answers. The request latency
histogram is per server process (measured by a Bottle plugin around every route)."""
from __future__ import annotations

import hmac
import math
import time

import bottle
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import monitor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def unknown_as_nan(count: int) -> float:
    """A queue figure the snapshot could not read (-1: the queue did not answer) as NaN."""
    return count if count >= 0 else math.nan


def families(snap: dict) -> list:
    """Prometheus metric families for one snapshot (pure)."""
    jobs = GaugeMetricFamily("pagesync_jobs", "Jobs by task and state (the jobs table in SQLite)",
                             labels=["task", "state"])
    for task, counts in snap["tasks"].items():
        for state, n in counts.items():
            jobs.add_metric([task, state], n)
    depth = snap["queue_depth"]
    workers = GaugeMetricFamily("pagesync_workers", "Workers seen in the last 5 minutes, by state",
                                labels=["state"])
    for state in ("alive", "lost", "stopped"):
        workers.add_metric([state], sum(1 for w in snap["workers"] if w["state"] == state))
    records, summary = snap["records"], snap["summary"]
    return [
        jobs,
        GaugeMetricFamily("pagesync_queue_up", "1 when the queue answers, 0 when unreachable",
                          value=1 if depth >= 0 else 0),
        GaugeMetricFamily("pagesync_queue_depth", "Messages waiting in the queue (NaN: unreachable)",
                          value=unknown_as_nan(depth)),
        GaugeMetricFamily("pagesync_jobs_pending", "Jobs stored but not yet handed to the "
                          "queue (delivered by the reconciler; counted as queued in pagesync_jobs)",
                          value=snap.get("pending", 0)),
        GaugeMetricFamily("pagesync_queue_scheduled", "Retries scheduled for later in the queue "
                          "(NaN: unreachable)", value=unknown_as_nan(snap.get("scheduled", 0))),
        CounterMetricFamily("pagesync_jobs_processed", "Job attempts that succeeded",
                            value=summary["processed"]),
        CounterMetricFamily("pagesync_jobs_failed", "Job attempts that failed (retried or dead)",
                            value=summary["failed"]),
        CounterMetricFamily("pagesync_records_ingested", "Records accepted by the sync API",
                            value=records.get("records_ingested", 0)),
        CounterMetricFamily("pagesync_records_rejected", "Records rejected by validation",
                            value=records.get("records_rejected", 0)),
        workers,
    ]


class SnapshotCollector:
    """Reads a fresh snapshot at every scrape."""

    def __init__(self, read_snapshot):
        self.read_snapshot = read_snapshot

    def collect(self):
        return families(self.read_snapshot())


class LatencyPlugin:
    """Bottle plugin: observe every route's handling time, labelled by method, route rule
    and status (the rule, not the path, keeps the label set small)."""
    name = "pagesync-latency"
    api = 2

    def __init__(self, histogram: Histogram):
        self.histogram = histogram

    def apply(self, callback, route):
        method, rule = route.method, route.rule

        def timed(*args, **kwargs):
            start, status = time.perf_counter(), 500
            try:
                out = callback(*args, **kwargs)
                status = out.status_code if isinstance(out, bottle.HTTPResponse) else \
                    bottle.response.status_code
                return out
            except bottle.HTTPResponse as resp:
                status = resp.status_code
                raise
            finally:
                self.histogram.labels(method, rule, str(status)).observe(time.perf_counter() - start)
        return timed


def bearer_matches(header: str, expected: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def mount(app: bottle.Bottle, state) -> CollectorRegistry:
    """Add GET /metrics and the latency plugin to the app; returns the app's registry."""
    from .web import guarded

    registry = CollectorRegistry(auto_describe=False)
    latency = Histogram("pagesync_http_request_duration_seconds",
                        "Time to handle an HTTP request, by method, route and status",
                        ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(SnapshotCollector(lambda: monitor.snapshot(
        state.pool.get(), state.huey, state.settings.worker_heartbeat)))

    def metrics_page():
        expected = state.settings.metrics_token
        if expected and not bearer_matches(bottle.request.get_header("Authorization", ""),
                                           expected):
            resp = bottle.HTTPResponse(
                status=401, body='{"success": false, "message": "/metrics needs '
                                 'Authorization: Bearer <PAGESYNC_METRICS_TOKEN>"}')
            resp.set_header("Content-Type", "application/json")
            resp.set_header("WWW-Authenticate", 'Bearer realm="pagesync metrics"')
            return resp
        resp = bottle.HTTPResponse(status=200, body=generate_latest(registry))
        resp.set_header("Content-Type", CONTENT_TYPE)
        return resp

    app.route("/metrics", "GET", guarded(metrics_page))
    app.install(LatencyPlugin(latency))
    return registry
