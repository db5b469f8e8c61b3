"""Issue 7: a token reaches its own user's data and nothing else; tokens are stored hashed,
never logged, and revoking one takes effect at once. Real server and worker processes."""
import copy
import hashlib
import json
import time

import requests

from .helpers import reference

DAY = "2025-12-01"


def stats(st, token, **params):
    resp = requests.get(st.url + "/api/v1/stats/daily", params={"date": DAY, **params},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return {h["host"]: h for h in resp.json()["hosts"]}


def stored(st, user: str) -> dict:
    rows = st.conn().execute(
        "SELECT p.id, p.data ->> '$.url' AS url, p.data FROM page_visits p JOIN users u ON u.id = p.user_id "
        "WHERE u.name = ? ORDER BY p.id", (user,)).fetchall()
    return {r["id"]: (r["url"], json.loads(r["data"])["duration_ms"]) for r in rows}


def test_same_ids_from_two_users_never_touch_each_other(stack_factory):
    st = stack_factory()
    st.start_server()
    alice, mallory = st.token("alice"), st.token("mallory")
    visits = reference("extension_visits.json")
    aggs = reference("extension_aggregates.json")
    assert st.sync(alice, visits).status_code == 200
    assert st.sync(alice, aggs).status_code == 200
    alice_rows = stored(st, "alice")
    st.start_worker()
    st.wait_drained(60)
    alice_before = stats(st, alice)
    assert alice_before

    # mallory sends the very same ids with other urls and longer durations, and the same tabs
    forged = copy.deepcopy(visits)
    for v in forged["pageVisits"]:
        v["url"] = "https://mallory.example/" + v["id"]
        v["domain"] = "mallory.example"
        v["duration"] += 3_600_000
        v["lastHeartbeat"] = (v.get("lastHeartbeat") or v["startedAt"]) + 3_600_000
    resp = st.sync(mallory, forged)
    assert resp.status_code == 200
    # her records are new rows of hers (each gets a job), not updates of alice's
    assert resp.json()["data"]["jobs_enqueued"] == len(forged["pageVisits"])
    forged_aggs = copy.deepcopy(aggs)
    for a in forged_aggs["tabAggregates"]:
        a["domainDurations"] = {"mallory.example": 60_000}
        a["currentUrl"] = "https://mallory.example/"
        a["currentDomain"] = "mallory.example"
    assert st.sync(mallory, forged_aggs).status_code == 200

    st.wait_drained(60)
    assert stored(st, "alice") == alice_rows
    assert set(stored(st, "mallory")) == set(alice_rows)
    assert all(url.startswith("https://mallory.example/") for url, _ in stored(st, "mallory").values())

    alice_hosts, mallory_hosts = stats(st, alice), stats(st, mallory)
    assert alice_hosts == alice_before  # mallory's sends changed none of alice's figures
    assert set(mallory_hosts) == {"mallory.example"}
    # no parameter lets one user ask for another's figures
    assert stats(st, mallory, user="alice", user_id=1) == mallory_hosts
    # aggregates linked only within their own user
    conn = st.conn()
    links = conn.execute(
        "SELECT a.user_id, a.linked_visit_id, v.user_id AS visit_user FROM tab_aggregates a "
        "LEFT JOIN page_visits v ON v.user_id = a.user_id AND v.id = a.linked_visit_id").fetchall()
    assert links and all(r["linked_visit_id"] is None or r["visit_user"] == r["user_id"] for r in links)
    processed = conn.execute("SELECT COUNT(*) FROM jobs j JOIN users u ON u.id = j.user_id "
                             "WHERE u.name = 'mallory' AND j.state = 'done'").fetchone()[0]
    assert processed == len(forged["pageVisits"]) + len(forged_aggs["tabAggregates"])


def test_tokens_are_hashed_never_logged_and_revoked_at_once(stack_factory):
    st = stack_factory()
    st.start_server(args=["--log-level", "DEBUG"])
    st.start_worker()
    token = st.token("alice")
    guessed = "psk_" + "A" * 43  # a well-formed token nobody was given
    body = reference("extension_visits.json")
    assert st.sync(token, body).status_code == 200
    for header in (f"Bearer {guessed}", f"Basic {token}", f"bearer {token}x", f"Bearer {token}\u00e9"):
        resp = requests.post(st.url + "/api/v1/data/sync", data=b"{}", timeout=10,
                             headers={"Authorization": header.encode("utf-8"),
                                      "Content-Type": "application/json"})
        assert resp.status_code == 401, header
        assert token not in resp.text and guessed not in resp.text
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    st.wait_drained(60)

    # at rest: only the sha256 of the token and a short prefix
    conn = st.conn()
    rows = [dict(r) for r in conn.execute("SELECT token_hash, prefix FROM tokens")]
    assert rows == [{"token_hash": hashlib.sha256(token.encode()).hexdigest(), "prefix": token[:10]}]
    dump = "\n".join(conn.iterdump())
    assert token not in dump
    listed = st.cli("token", "list", "--json").stdout
    assert token not in listed
    # the stored sync set the token's last sync time; the refused requests changed nothing
    [alice] = json.loads(listed)
    assert alice["last_used_at"] and alice["created_at"] <= alice["last_used_at"] <= time.time()
    before = alice["last_used_at"]
    assert st.sync(token, None, raw=b"not json").status_code == 400
    assert json.loads(st.cli("token", "list", "--json").stdout)[0]["last_used_at"] == before

    # revoked: the very next request is refused, no restart, no cache
    st.cli("token", "revoke", "alice")
    resp = st.sync(token, body)
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    resp = requests.get(st.url + "/api/v1/stats/daily", headers={"Authorization": f"Bearer {token}"},
                        timeout=10)
    assert resp.status_code == 401

    st.stop()
    logs = st.logs()
    assert "pagesync serving" in logs  # the server did log, at DEBUG level
    for secret in (token, guessed, token[4:]):
        assert secret not in logs
