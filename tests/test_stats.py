"""Issue 3 end to end: real server and worker, the stats API and CLI, tab linking."""
import json
import random

import requests

from pagesync import stats, store
from pagesync.processing import compute_rollups

from .helpers import reference
from .test_rollups_exact import make_scenario


def get_daily(st, token, day):
    resp = requests.get(f"{st.url}/api/v1/stats/daily", params={"date": day},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_random_scenario_through_http_matches_fresh_computation(stack_factory):
    st = stack_factory("sqlite", timezone="Europe/Paris")
    st.start_server()
    tokens = [st.token(f"user{u}") for u in range(2)]
    st.start_worker()
    for user, body in make_scenario(random.Random(42), 2):
        resp = st.sync(tokens[user], body)
        assert resp.status_code == 200, resp.text
    st.wait_drained(60)
    conn = st.conn()
    fresh = compute_rollups(store.all_records(conn, "page_visits"),
                            store.all_records(conn, "tab_aggregates"), "Europe/Paris")
    assert fresh
    names = {store.user_id_by_name(conn, f"user{u}"): u for u in range(2)}
    days = {(user, day) for user, day, _ in fresh}
    for user, day in days:
        body = get_daily(st, tokens[names[user]], day)
        assert body["timezone"] == "Europe/Paris"
        got = {h["host"]: [h["visits"], h["seconds"], h["active_seconds"], h["tab_seconds"]]
               for h in body["hosts"]}
        want = {host: v for (u, d, host), v in fresh.items() if u == user and d == day}
        assert got == want
        seconds = [h["seconds"] for h in body["hosts"]]
        assert seconds == sorted(seconds, reverse=True)


def test_aggregate_before_visits_is_linked_when_they_arrive(stack):
    token = stack.token()
    stack.start_worker()
    aggs, visits = reference("extension_aggregates.json"), reference("extension_visits.json")
    assert stack.sync(token, aggs).status_code == 200  # the aggregate comes first
    stack.wait_drained(30)
    conn = stack.conn()
    assert conn.execute("SELECT COUNT(linked_visit_id) FROM tab_aggregates").fetchone()[0] == 0
    assert stack.sync(token, visits).status_code == 200
    stack.wait_drained(30)
    rows = conn.execute("SELECT tab_id, linked_visit_id FROM tab_aggregates ORDER BY tab_id").fetchall()
    first = {}
    for v in sorted(visits["pageVisits"], key=lambda v: v["startedAt"]):
        first.setdefault(v["tabId"], v["id"])
    assert {r["tab_id"]: r["linked_visit_id"] for r in rows} == {t: first.get(t) for t in (101, 102, 103, 104)}


def test_unlinked_aggregate_still_counts_tab_seconds(stack):
    token = stack.token()
    stack.start_worker()
    agg = {"tabId": 77, "startTime": 1764547200000, "lastActiveTime": 1764547260000,
           "domainDurations": {"www.Example.com": 61_500}, "anonymousClientId": "anon_x"}
    stack.sync(token, {"pageVisits": [], "tabAggregates": [agg]})
    stack.wait_drained(30)
    body = get_daily(stack, token, "2025-12-01")
    assert body["hosts"] == [{"host": "example.com", "site": "example.com", "visits": 0, "seconds": 0,
                              "active_seconds": 0, "tab_seconds": 62}]
    assert stack.conn().execute("SELECT linked_visit_id FROM tab_aggregates").fetchone()[0] is None


def test_reference_day_figures_and_stats_cli(stack):
    token = stack.token("alice")
    stack.start_worker()
    for name in ("extension_visits.json", "extension_aggregates.json", "api_dialect.json"):
        assert stack.sync(token, reference(name)).status_code == 200
    stack.wait_drained(30)
    assert stats.verify(stack.conn(), "UTC")["equal"]
    day = get_daily(stack, token, "2025-12-01")
    hosts = {h["host"]: h for h in day["hosts"]}
    wiki = [v for v in reference("extension_visits.json")["pageVisits"] if v["domain"] == "en.wikipedia.org"]
    assert hosts["en.wikipedia.org"]["visits"] == len(wiki)
    assert hosts["en.wikipedia.org"]["site"] == "wikipedia.org"
    assert hosts["en.wikipedia.org"]["seconds"] == sum(v["durationSeconds"] or 0 for v in wiki)
    assert hosts["youtube.com"]["tab_seconds"] > 0 and "www.youtube.com" not in hosts
    out = json.loads(stack.cli("stats", "--user", "alice", "--date", "2025-12-01", "--json").stdout)
    assert {r["host"]: r["seconds"] for r in out["rows"]} == {h: v["seconds"] for h, v in hosts.items()}
    by_site = json.loads(stack.cli("stats", "--date", "2025-12-01", "--by", "site", "--json").stdout)
    assert "bbc.co.uk" in {r["site"] for r in by_site["rows"]}
    table = stack.cli("stats", "--user", "alice", "--date", "2025-12-01").stdout
    assert "en.wikipedia.org" in table and "total" in table
    bad = stack.cli("stats", "--date", "yesterday", check=False)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


def test_stats_api_rejects_bad_date_and_bad_token(stack):
    token = stack.token()
    resp = requests.get(f"{stack.url}/api/v1/stats/daily", params={"date": "2025-13-45"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 400 and "YYYY-MM-DD" in resp.json()["message"]
    # the date as sent in the message, not its UTF-8 bytes read as latin-1
    resp = requests.get(f"{stack.url}/api/v1/stats/daily", params={"date": "２０２６-12-04"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 400 and "'２０２６-12-04'" in resp.json()["message"]
    resp = requests.get(f"{stack.url}/api/v1/stats/daily?date=%ff",
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 400 and "not UTF-8" in resp.json()["message"], resp.text
    resp = requests.get(f"{stack.url}/api/v1/stats/daily", timeout=10)
    assert resp.status_code == 401


def test_hosts_in_stats_are_what_a_browser_reads_and_bad_hosts_are_rejected(stack):
    """The tester's urls, end to end: refused hosts are rejected one by one (200, the rest
    stored), and the stats host keys are a browser's: punycode, one key per spelling."""
    token = stack.token("alice")
    stack.start_worker()
    t = 1764547200000
    bad = ["https://\u0080x.com/x", "https://\u202egnp.exe/", "https://xn--/", "https://a..b/",
           "https://*.com/", "https://ü" + "a" * 70 + ".com/", "https://\U000e0001.com/",
           "https://1.2.3.256/", "https://a.\u3002b.com/"]
    good = {"https://WWW.Bücher.example:443/": "xn--bcher-kva.example",
            "https://xn--bcher-kva.example/": "xn--bcher-kva.example",
            "https://ß.de/": "xn--zca.de", "https://a\u3002b.com/": "a.b.com",
            "https://%41.com/": "a.com", "https://1.2.3.4/": "1.2.3.4",
            "https://a_b.example.com/": "a_b.example.com"}
    visits = [{"id": f"pv_{t + i}_1", "url": url, "startedAt": t + i * 1000, "durationSeconds": 10}
              for i, url in enumerate(bad + list(good))]
    resp = stack.sync(token, {"pageVisits": visits, "tabAggregates": []})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["page_visits_synced"] == len(good) and data["rejected_records_count"] == len(bad)
    assert [r["index"] for r in data["rejected"]] == list(range(len(bad)))
    assert all(r["errors"][0]["field"] == "url" and r["errors"][0]["message"].startswith("has an invalid host")
               for r in data["rejected"])
    stack.wait_drained(30)
    out = json.loads(stack.cli("stats", "--user", "alice", "--date", "2025-12-01", "--json").stdout)
    rows = {r["host"]: r for r in out["rows"]}
    assert set(rows) == set(good.values())
    assert rows["xn--bcher-kva.example"]["visits"] == 2
    assert rows["1.2.3.4"]["site"] == "1.2.3.4" and rows["a.b.com"]["site"] == "b.com"
    assert stats.verify(stack.conn(), "UTC")["equal"]
