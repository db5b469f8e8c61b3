"""Issue 5: /metrics in the Prometheus text format agrees with `pagesync watch --once --json`;
/readyz answers 503 when the queue or the database is unavailable."""
import math
import sqlite3

import requests
from prometheus_client.parser import text_string_to_metric_families

from pagesync import store

from .helpers import RedisServer, reference, wait_for


def scrape(url: str) -> dict:
    """{(sample name, frozenset(labels)): value} from a /metrics page."""
    resp = requests.get(url + "/metrics", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_parse_and_match_watch(stack_factory, queue_url):
    st = stack_factory(queue_url)
    st.start_server()
    token = st.token()
    visits = reference("extension_visits.json")
    bad = {"pageVisits": [{"id": "pv_bad", "url": "ftp://nope", "startedAt": 1764547200000}] +
           visits["pageVisits"][:2]}
    assert st.sync(token, visits).status_code == 200
    assert st.sync(token, bad).status_code == 200  # two kept (unchanged), one rejected
    assert st.sync(token, reference("extension_aggregates.json")).status_code == 200
    queued = scrape(st.url)
    st.start_worker()
    st.wait_drained(60)
    metrics, snap = scrape(st.url), st.snapshot()

    for task, counts in snap["tasks"].items():
        for state, n in counts.items():
            assert metrics[("pagesync_jobs", frozenset({"task": task, "state": state}.items()))] == n
    assert metrics[("pagesync_queue_depth", frozenset())] == snap["queue_depth"] == 0
    assert metrics[("pagesync_queue_up", frozenset())] == 1
    assert metrics[("pagesync_jobs_processed_total", frozenset())] == snap["summary"]["processed"]
    assert metrics[("pagesync_jobs_failed_total", frozenset())] == snap["summary"]["failed"] == 0
    n_records = len(visits["pageVisits"]) + len(reference("extension_aggregates.json")["tabAggregates"])
    assert snap["summary"]["processed"] == n_records
    assert metrics[("pagesync_records_ingested_total", frozenset())] == snap["records"]["records_ingested"]
    assert snap["records"]["records_ingested"] == n_records + 2
    assert metrics[("pagesync_records_rejected_total", frozenset())] == 1
    assert metrics[("pagesync_workers", frozenset({"state": "alive"}.items()))] == len(snap["workers"]) == 1
    # before the worker ran, every job sat in the queue
    assert queued[("pagesync_queue_depth", frozenset())] == n_records
    # the latency histogram counted the three syncs
    sync_count = ("pagesync_http_request_duration_seconds_count",
                  frozenset({"method": "POST", "route": "/api/v1/data/sync", "status": "200"}.items()))
    assert metrics[sync_count] == 3
    inf_bucket = ("pagesync_http_request_duration_seconds_bucket", frozenset(
        {"method": "POST", "route": "/api/v1/data/sync", "status": "200", "le": "+Inf"}.items()))
    assert metrics[inf_bucket] == 3


def test_readyz_503_when_redis_stops(stack_factory, tmp_path):
    redis_server = RedisServer(tmp_path)
    try:
        st = stack_factory(redis_server.url)
        st.start_server()
        assert requests.get(st.url + "/readyz", timeout=5).status_code == 200
        redis_server.stop()
        resp = requests.get(st.url + "/readyz", timeout=30)  # redis-py retries with backoff first
        assert resp.status_code == 503
        assert "queue" in resp.json()["problems"]
        assert resp.headers["Retry-After"]
        metrics = scrape(st.url)  # still answers, and says the queue is down
        assert metrics[("pagesync_queue_up", frozenset())] == 0
        assert math.isnan(metrics[("pagesync_queue_depth", frozenset())])
    finally:
        redis_server.stop()


def test_readyz_503_when_database_locked(stack):
    assert requests.get(stack.url + "/readyz", timeout=5).status_code == 200
    blocker = sqlite3.connect(stack.settings.db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        resp = requests.get(stack.url + "/readyz", timeout=20)
        assert resp.status_code == 503
        assert "database" in resp.json()["problems"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: requests.get(stack.url + "/readyz", timeout=10).status_code == 200, 15,
             "readyz to recover")
    assert store.counters(stack.conn()).get("readyz") == 0


def test_metrics_token_guards_the_page(stack_factory):
    st = stack_factory(metrics_token="s3cret-scrape")
    st.start_server()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape"},
                    {"Authorization": "Bearer s3cret-scrape\u00e9".encode()}):
        resp = requests.get(st.url + "/metrics", headers=headers, timeout=10)
        assert resp.status_code == 401, headers
        assert "PAGESYNC_METRICS_TOKEN" in resp.json()["message"]
        assert "pagesync_queue_depth" not in resp.text
    resp = requests.get(st.url + "/metrics", headers={"Authorization": "Bearer s3cret-scrape"},
                        timeout=10)
    assert resp.status_code == 200 and "pagesync_queue_depth" in resp.text


def test_an_unreachable_queue_is_logged_once_not_per_look(caplog):
    """Prometheus scrapes and dashboards poll: a queue that stays away is one WARNING, a
    reminder a minute, and one INFO line with how long it lasted."""
    import logging

    import redis

    from pagesync.queue import Reachability, queue_depth

    class FakeHuey:
        up = False

        def pending_count(self):
            if not self.up:
                raise redis.ConnectionError("Connection refused")
            return 7

    now = [100.0]
    reach, huey = Reachability(reminder=60, clock=lambda: now[0]), FakeHuey()
    caplog.set_level(logging.INFO, logger="pagesync.queue")
    for _ in range(30):  # 30 looks over 75 s
        assert queue_depth(huey, reach) == -1
        now[0] += 2.5
    huey.up = True
    assert queue_depth(huey, reach) == 7 and queue_depth(huey, reach) == 7
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["queue unreachable (ConnectionError: Connection refused)",
                     "queue still unreachable (first seen 60 s ago; ConnectionError: Connection "
                     "refused)",
                     "queue reachable again (first seen unreachable 75 s before)"]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]
    # a failure after a minute without any is a new outage: it may have been back unseen
    caplog.clear()
    huey.up = False
    for gap in (0, 61, 30):
        now[0] += gap
        assert queue_depth(huey, reach) == -1
    assert [r.getMessage() for r in caplog.records] == [
        "queue unreachable (ConnectionError: Connection refused)"] * 2


def test_a_run_of_busy_database_answers_is_logged_once(caplog):
    import logging
    import sqlite3

    from pagesync.queue import Reachability

    now = [0.0]
    busy = Reachability("database", reminder=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="pagesync.queue")
    for _ in range(20):  # 20 syncs answered 503 over 19 s
        busy.down(sqlite3.OperationalError("database is locked"), "; answered 503")
        now[0] += 1
    busy.up()
    busy.up()
    assert [r.getMessage() for r in caplog.records] == [
        "database busy (OperationalError: database is locked); answered 503",
        "database available again (first seen busy 20 s before)"]


def test_an_unreachable_queue_is_not_asked_again_for_5_s():
    """A hung Redis costs each look a 2 s timeout, and the dashboard and Prometheus look
    every few seconds: within 5 s of a failure the depth is 'unreachable' without asking."""
    import redis

    from pagesync.queue import RETRY_QUEUE_AFTER, Reachability, queue_depth

    class FakeHuey:
        up, asked = False, 0

        def pending_count(self):
            self.asked += 1
            if not self.up:
                raise redis.TimeoutError("Timeout reading from socket")
            return 3

    now = [100.0]
    reach, huey = Reachability(clock=lambda: now[0]), FakeHuey()
    assert queue_depth(huey, reach) == -1 and huey.asked == 1
    huey.up = True
    now[0] += RETRY_QUEUE_AFTER - 0.1
    assert queue_depth(huey, reach) == -1 and huey.asked == 1
    now[0] += 0.2
    assert queue_depth(huey, reach) == 3 and huey.asked == 2
    assert queue_depth(huey, reach) == 3 and huey.asked == 3
