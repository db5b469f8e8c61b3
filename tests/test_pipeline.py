"""Issue 2: the whole pipeline with real processes (server and worker on free ports)."""
import copy
import json
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

from pagesync import procs
from pagesync.replay import ReplayResult, Request, record_outcome

from .helpers import SAMPLES, reference, row_count, wait_for


def test_reference_payloads_stored_queued_then_processed(stack_factory, queue_url):
    st = stack_factory(queue_url)
    st.start_server()
    token = st.token("alice")
    visits, aggs = reference("extension_visits.json"), reference("extension_aggregates.json")
    r1, r2 = st.sync(token, visits), st.sync(token, aggs)
    assert r1.status_code == 200, r1.text
    assert r2.status_code == 200, r2.text
    n_visits, n_aggs = len(visits["pageVisits"]), len(aggs["tabAggregates"])
    assert r1.json()["data"]["page_visits_synced"] == n_visits
    assert r2.json()["data"]["tab_aggregates_synced"] == n_aggs
    # before any worker runs, the jobs wait in the queue
    snap = st.snapshot()
    assert snap["queue_depth"] == n_visits + n_aggs
    assert snap["tasks"]["ProcessPageVisit"]["queued"] == n_visits
    assert snap["tasks"]["ProcessTabAggregate"]["queued"] == n_aggs
    st.start_worker()
    st.wait_drained(60)
    snap = st.snapshot()
    assert snap["queue_depth"] == 0
    assert snap["tasks"]["ProcessPageVisit"] == {"queued": 0, "running": 0, "retrying": 0,
                                                 "done": n_visits, "failed": 0}
    assert snap["tasks"]["ProcessTabAggregate"]["done"] == n_aggs
    assert snap["tasks"]["ProcessTabAggregate"]["failed"] == 0


def test_same_payload_twice_no_duplicates_no_new_jobs(stack):
    token = stack.token()
    body = reference("extension_visits.json")
    first = stack.sync(token, body).json()["data"]
    second = stack.sync(token, body).json()["data"]
    assert first["jobs_enqueued"] == len(body["pageVisits"])
    assert second["jobs_enqueued"] == 0
    assert second["page_visits_synced"] == len(body["pageVisits"])
    conn = stack.conn()
    assert row_count(conn, "page_visits") == len(body["pageVisits"])
    assert stack.snapshot()["queue_depth"] == len(body["pageVisits"])
    # every kind of record: closed tabs and the API dialect too
    closed = reference("extension_aggregates.json")
    for agg in closed["tabAggregates"]:
        agg["closedAt"] = agg["lastActiveTime"]
    for other in (closed, reference("api_dialect.json")):
        n = len(other.get("pageVisits") or []) + len(other.get("tabAggregates") or [])
        assert stack.sync(token, other).json()["data"]["jobs_enqueued"] == n
        assert stack.sync(token, other).json()["data"]["jobs_enqueued"] == 0


def test_longer_duration_updates_row_and_enqueues_one_job(stack):
    token = stack.token()
    body = reference("extension_visits.json")
    stack.sync(token, body)
    visit = copy.deepcopy(body["pageVisits"][0])
    visit["duration"] += 60_000
    visit["durationSeconds"] += 60
    visit["lastHeartbeat"] += 60_000
    resp = stack.sync(token, {"pageVisits": [visit], "tabAggregates": []}).json()["data"]
    assert resp["jobs_enqueued"] == 1
    conn = stack.conn()
    row = conn.execute("SELECT data, revision FROM page_visits WHERE id = ?", (visit["id"],)).fetchone()
    assert json.loads(row["data"])["duration_ms"] == visit["duration"]
    assert row["revision"] == 2
    assert row_count(conn, "page_visits") == len(body["pageVisits"])
    # a late, shorter re-send loses nothing
    stale = stack.sync(token, {"pageVisits": [body["pageVisits"][0]]}).json()["data"]
    assert stale["jobs_enqueued"] == 0
    row = conn.execute("SELECT data FROM page_visits WHERE id = ?", (visit["id"],)).fetchone()
    assert json.loads(row["data"])["duration_ms"] == visit["duration"]


def test_bad_tokens_are_401_and_store_nothing(stack):
    token = stack.token("alice")
    body = reference("extension_visits.json")
    for bad in (None, "psk_wrong", "Basic abc"):
        resp = stack.sync(bad, body) if bad != "Basic abc" else stack.sync(
            None, body, headers={"Authorization": "Basic abc"})
        assert resp.status_code == 401
        assert "token" in resp.json()["message"].lower()
    stack.cli("token", "revoke", "alice")
    resp = stack.sync(token, body)
    assert resp.status_code == 401
    assert row_count(stack.conn(), "page_visits") == 0


def test_malformed_requests_are_400_with_clear_message(stack):
    token = stack.token()
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"pageVisits": {"a": 1}}).encode(), "pageVisits must be an array"),
        (json.dumps({"pageVisits": [{"id": f"v{i}", "url": "https://a.example/",
                                     "startedAt": 1764547200000} for i in range(1001)]}).encode(),
         "Too many records"),
    ]
    for raw, text in cases:
        resp = stack.sync(token, None, raw=raw)
        assert resp.status_code == 400, (raw[:40], resp.text)
        assert text in resp.json()["message"]
    resp = stack.sync(token, None, raw=b"{}", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    assert row_count(stack.conn(), "page_visits") == 0


def test_partial_rejection_keeps_valid_records(stack):
    token = stack.token()
    body = reference("extension_visits.json")
    good = body["pageVisits"][:3]
    bad = [{**good[0], "id": "pv_neg", "visitId": "pv_neg", "duration": -1},
           {**good[0], "id": "pv_js", "visitId": "pv_js", "url": "javascript:alert(1)"}]
    resp = stack.sync(token, {"pageVisits": good + bad})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert data["page_visits_synced"] == 3
    assert data["rejected_records_count"] == 2
    by_id = {r["id"]: r for r in data["rejected"]}
    assert by_id["pv_neg"]["errors"][0]["field"] == "duration"
    assert by_id["pv_js"]["errors"][0]["field"] == "url"
    assert by_id["pv_neg"]["index"] == 3
    assert row_count(stack.conn(), "page_visits") == 3
    # every record rejected: 400
    resp = stack.sync(token, {"pageVisits": bad})
    assert resp.status_code == 400
    assert resp.json()["data"]["rejected_records_count"] == 2


def test_two_users_same_id_two_rows(stack):
    alice, bob = stack.token("alice"), stack.token("bob")
    body = reference("extension_visits.json")
    stack.sync(alice, {"pageVisits": body["pageVisits"][:1]})
    changed = dict(body["pageVisits"][0], title="bob's title", duration=5)
    stack.sync(bob, {"pageVisits": [changed]})
    rows = stack.conn().execute("SELECT user_id, data ->> '$.title' AS title FROM page_visits ORDER BY user_id").fetchall()
    assert [r["title"] for r in rows] == [body["pageVisits"][0]["title"], "bob's title"]


def test_replay_cli_reports_and_exit_codes(stack):
    token = stack.token()
    res = stack.cli("replay", str(SAMPLES), "--url", stack.url, "--token", token, "--json")
    out = json.loads(res.stdout)
    assert out["requests_failed"] == 0
    assert out["visits"] > 200 and out["aggregates"] > 40
    fields = {e["field"] for r in out["rejected"] for e in r["errors"]}
    assert {"url", "startedAt", "duration", "category", "engagementRate", "id"} <= fields
    # every record accounted for: stored, rejected, or in a failed request
    assert out["stored"] == out["visits"] + out["aggregates"]
    assert out["stored"] + len(out["rejected"]) + out["records_failed"] == out["records"]
    assert out["records_failed"] == 0 and out["records_unsent"] == 0 and not out["interrupted"]
    bad = stack.cli("replay", str(SAMPLES), "--url", stack.url, "--token", "nope", "--retries", "0",
                    check=False)
    assert bad.returncode == 1
    assert "Unknown or revoked token" in bad.stdout
    # the first 401 stops it: that request's records failed, the rest were not sent
    total = out["records"]
    first = json.loads(stack.cli("replay", str(SAMPLES), "--url", stack.url, "--token", "nope",
                                 "--json", check=False).stdout)
    assert len(first["failures"]) == 1 and first["failures"][0]["status"] == 401
    failed = first["records_failed"]
    assert 0 < failed < total and first["records_unsent"] == total - failed
    assert first["not_sent"] == "the token was refused (401)"
    assert f"{failed}/{total} records sent  0 stored · 0 rejected · {failed} failed" in bad.stderr
    assert re.search(rf"records failed \(request failed\) +{failed}\b", bad.stdout), bad.stdout
    assert re.search(rf"records not sent \(the token was refused \(401\)\) +{total - failed}\b",
                     bad.stdout), bad.stdout
    assert re.search(r"page visits stored +0\b", bad.stdout), bad.stdout


def test_replay_reports_the_status_a_request_gave_up_on(stack):
    """A 503 that outlasts the retries is reported as 503 (0 means: no answer at all)."""
    token = stack.token()
    holder = sqlite3.connect(stack.settings.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the database
    try:
        res = stack.cli("replay", str(SAMPLES / "desktop_2_aggregates.json"), "--url", stack.url,
                        "--token", token, "--retries", "0", "--json", check=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert res.returncode == 1
    (failure,) = json.loads(res.stdout)["failures"]
    assert failure["status"] == 503
    assert failure["error"] == "Storage busy, retry later"


def test_replay_counts_each_record_once_as_stored_rejected_or_failed():
    result = ReplayResult(records=30)
    req = Request("f.json", {}, 10)
    rejected = [{"type": "pageVisit", "index": 0, "id": "x", "errors": []}]
    record_outcome(result, req, 200, {"data": {"page_visits_synced": 9, "rejected": rejected}}, "")
    record_outcome(result, req, 400, {"data": {"rejected": rejected * 10}}, "Every record was rejected")
    record_outcome(result, req, 503, None, "Storage busy, retry later")
    assert (result.stored, len(result.rejected), result.records_failed) == (9, 11, 10)
    assert result.records_answered == 30 and result.records_unsent == 0
    # a request whose every record was rejected was answered: only the 503 failed
    assert (result.requests_ok, result.requests_failed) == (2, 1)


def test_replay_exit_code_and_counts_do_not_depend_on_the_batch_size(stack, tmp_path):
    """The same records, all of them rejected in the first request: a 400 "every record
    was rejected" is an answer with rejections, like a 200 with some."""
    token = stack.token()
    good = many_visits(3, "bs")["pageVisits"]
    bad = [dict(good[0], id=f"bad_{i}", url="javascript:alert(1)") for i in range(2)]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"pageVisits": bad + good}))
    outs = []
    for size in ("2", "1000"):
        res = stack.cli("replay", str(path), "--url", stack.url, "--token", token,
                        "--batch-size", size, "--json", check=False)
        assert res.returncode == 0, (size, res.stdout)
        outs.append(json.loads(res.stdout))
    for out in outs:
        assert out["requests_failed"] == 0 and out["records_failed"] == 0
        assert len(out["rejected"]) == 2 and out["records"] == 5
    assert outs[0]["requests_ok"] == 3 and outs[1]["requests_ok"] == 1


def many_visits(n: int, prefix: str) -> dict:
    start = 1764547200000
    return {"pageVisits": [{"id": f"{prefix}_{i}", "url": f"https://example.org/{i}",
                            "startedAt": start + i * 1000, "duration": 1000, "tabId": 1}
                           for i in range(n)]}


@pytest.mark.parametrize("concurrency,as_json", [(1, False), (4, True)])
def test_ctrl_c_stops_replay_with_what_was_stored_so_far(stack, tmp_path, concurrency, as_json):
    token = stack.token()
    path = tmp_path / "many.json"
    path.write_text(json.dumps(many_visits(3000, "int")))
    args = ["replay", str(path), "--url", stack.url, "--token", token, "--batch-size", "1",
            "--concurrency", str(concurrency)] + (["--json"] if as_json else [])
    proc = subprocess.Popen([sys.executable, "-m", "pagesync", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=procs.child_env(stack.settings))
    try:
        wait_for(lambda: row_count(stack.conn(), "page_visits") >= 50, 30, "replay under way")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    stored = row_count(stack.conn(), "page_visits")
    assert 50 <= stored < 3000
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    assert f"{stored:,} stored; the rest was not sent" in lines[0]
    assert "Traceback" not in err
    if as_json:  # the requests on their way got their answer: the count is exact
        summary = json.loads(out)
        assert summary["interrupted"] and summary["stored"] == stored
        assert summary["records_unknown"] == 0
        assert summary["records_unsent"] == 3000 - stored - summary["records_failed"]
    else:
        assert "Replay summary (interrupted)" in out
        assert re.search(rf"page visits stored +{stored}\b", out), out


def test_replay_splits_files_over_the_batch_limit(stack):
    token = stack.token()
    res = stack.cli("replay", str(SAMPLES / "laptop_1_visits.json"), "--url", stack.url,
                    "--token", token, "--batch-size", "25", "--json")
    out = json.loads(res.stdout)
    assert out["requests_ok"] == 5  # 111 records in batches of 25
    assert out["requests_failed"] == 0
