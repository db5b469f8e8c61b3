"""Issue 5: the /jobs dashboard in real Chromium against a real server and worker, plus its
protection (login, CSRF, escaping, headers) checked over HTTP."""
import os
import re

import pytest
import requests

from .helpers import need, wait_for

USER, PASSWORD = "ops", "correct horse battery"
XSS_TITLE = "<img src=x onerror=alert(1)>"
XSS_ID = "pv_bad<script>alert(2)</script>"
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
T0 = 1764547200000


def visit(record_id: str, title: str, n: int) -> dict:
    return {"id": record_id, "url": f"https://example.org/page/{n}", "title": title,
            "startedAt": T0 + n * 60_000, "endedAt": T0 + n * 60_000 + 30_000,
            "duration": 30_000, "activeDuration": 20_000, "tabId": n}


def batch() -> dict:
    return {"pageVisits": [visit("pv_ok_1", "First page", 1), visit("pv_ok_2", "Second page", 2),
                           visit(XSS_ID, XSS_TITLE, 3)]}


@pytest.fixture
def browser():
    need("chromium", os.path.exists("/usr/bin/chromium"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        yield b
        b.close()


def auth_stack(stack_factory):
    st = stack_factory(dashboard_user=USER, dashboard_password=PASSWORD)
    st.start_server()
    return st


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf-token" content="([0-9a-f]{64})"', html).group(1)


def test_browser_live_counters_failed_job_retry_and_escaping(stack_factory, browser):
    from playwright.sync_api import expect

    st = auth_stack(stack_factory)
    token = st.token()
    dialogs = []
    page = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}).new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors = []  # script errors and CSP violations would show here
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(st.url + "/jobs")
    processed, dead = page.locator("#t-processed"), page.locator("#t-dead")
    expect(page.locator("#t-processed")).to_have_text("0")

    # a worker whose fault switch fails the XSS record once, no retries: it goes dead
    st.start_worker(extra_env={"PAGESYNC_FAULT": "fail-record:pv_bad", "PAGESYNC_RETRIES": "0"})
    assert st.sync(token, batch()).status_code == 200
    expect(page.locator("#t-processed")).to_have_text("2", timeout=20_000)
    expect(page.locator("#t-dead")).to_have_text("1", timeout=10_000)
    card = page.locator("article.job")
    assert card.count() == 1
    assert card.locator(".job-title").inner_text() == XSS_TITLE  # shown as text
    assert XSS_ID in card.locator(".job-id").inner_text()
    assert "injected failure" in card.locator(".job-error").inner_text()
    card.locator("summary").click()
    assert "RuntimeError" in card.locator("pre").inner_text()  # the traceback
    assert page.locator("#failed img, #failed script").count() == 0
    assert page.locator("#t-failed").inner_text() == "1"

    # restart the worker without the fault, press Retry: the job is processed
    for proc in st.workers:
        proc.terminate()
        proc.wait(20)
    st.workers.clear()
    st.start_worker()
    card.locator("button.retry").click()
    expect(page.locator("#t-processed")).to_have_text("3", timeout=20_000)
    expect(page.locator("#t-dead")).to_have_text("0")
    assert page.locator("article.job").count() == 0
    assert processed.inner_text() == "3" and dead.inner_text() == "0"

    # look the record up: its job is done, its title still plain text
    page.fill("#lookup-id", XSS_ID)
    page.click("#lookup button")
    row = page.locator("#lookup-result tbody tr")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[2] == "done" and XSS_TITLE in cells
    assert page.locator("#lookup-result img").count() == 0
    assert dialogs == []
    assert errors == []


def test_watch_and_browser_say_when_queued_jobs_have_no_message_in_the_queue(
        stack_factory, browser, dedicated_redis):
    """A Redis restarted without its data answers again, empty: 'Enqueued 3, queue depth 0,
    no worker' would leave the user guessing. Both say what happened and what mends it."""
    from playwright.sync_api import expect

    st = stack_factory(dedicated_redis.url, dashboard_user=USER, dashboard_password=PASSWORD)
    st.start_server()
    assert st.sync(st.token(), batch()).status_code == 200  # 3 jobs, their messages in Redis
    dedicated_redis.stop()
    dedicated_redis.start()  # no persistence: the messages are gone
    conn = st.conn()
    conn.execute("UPDATE jobs SET enqueued_at = enqueued_at - 10")  # queued over 5 s ago
    conn.close()
    page = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}).new_page()
    page.goto(st.url + "/jobs")
    alert = page.locator("#queue-alert")
    expect(alert).to_have_text("3 queued jobs have no message in the queue (it lost them: a Redis "
                               "restarted without its data?). A worker sends them again when it "
                               "starts; nothing is lost.", timeout=15_000)
    expect(page.locator("#t-depth")).to_have_text("0")
    screen = " ".join(st.cli("watch", "--once").stdout.split())
    assert "3 queued jobs have no message in the queue" in screen
    st.start_worker()
    st.wait_drained(40)  # its reconciler sent them again
    expect(alert).to_be_hidden(timeout=15_000)
    expect(page.locator("#t-processed")).to_have_text("3")


def test_browser_shows_the_queue_outage_and_the_jobs_awaiting_delivery(stack_factory, browser,
                                                                       tmp_path):
    from playwright.sync_api import expect

    from .helpers import RedisServer

    redis = RedisServer(tmp_path)  # skips (fails in CI) without redis-server
    try:
        st = stack_factory(redis.url, dashboard_user=USER, dashboard_password=PASSWORD)
        st.start_server()
        page = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}).new_page()
        page.goto(st.url + "/jobs")
        expect(page.locator("#t-depth")).to_have_text("0")
        assert page.locator("#queue-alert").is_hidden()
        redis.stop()
        assert st.sync(st.token(), batch()).status_code == 200  # stored, not yet queued
        alert = page.locator("#queue-alert")
        expect(alert).to_be_visible(timeout=15_000)
        expect(alert).to_contain_text("The queue is unreachable. Syncs are still stored; 3 jobs "
                                      "wait in SQLite")
        expect(page.locator("#t-depth")).to_have_text("unreachable")
        expect(page.locator("#t-pending")).to_have_text("3")
    finally:
        redis.stop()


def test_login_required_and_security_headers(stack_factory):
    st = auth_stack(stack_factory)
    for path in ("/jobs", "/jobs/api/snapshot", "/jobs/api/record?id=x", "/api/v1/jobs",
                 "/jobs/static/jobs.js"):
        resp = requests.get(st.url + path, timeout=5)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.get(st.url + "/jobs", auth=(USER, "guess"), timeout=5)
    assert wrong.status_code == 401
    ok = requests.get(st.url + "/jobs", auth=(USER, PASSWORD), timeout=5)
    assert ok.status_code == 200 and "pagesync jobs" in ok.text
    assert ok.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert ok.headers["X-Frame-Options"] == "DENY"
    assert ok.headers["X-Content-Type-Options"] == "nosniff"
    assert ok.headers["Referrer-Policy"] == "no-referrer"
    snap = requests.get(st.url + "/jobs/api/snapshot", auth=(USER, PASSWORD), timeout=5).json()
    assert snap["summary"] == {"processed": 0, "failed": 0, "enqueued": 0, "retrying": 0, "dead": 0}


def test_a_dashboard_opened_with_credentials_in_its_url_updates(stack_factory, browser):
    """http://user:pass@host/jobs: fetch refuses urls that carry credentials, so the page
    asks its own origin (the browser still sends the login)."""
    from playwright.sync_api import expect

    st = auth_stack(stack_factory)
    assert st.sync(st.token(), batch()).status_code == 200
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(st.url.replace("http://", f"http://{USER}:{PASSWORD.replace(' ', '%20')}@") + "/jobs")
    expect(page.locator("#t-enqueued")).to_have_text("3", timeout=10_000)
    assert "not updating" not in page.content() and errors == []


def test_without_configured_credentials_403_says_how(stack_factory):
    st = stack_factory()
    st.start_server()
    resp = requests.get(st.url + "/jobs", auth=("anyone", "anything"), timeout=5)
    assert resp.status_code == 403
    assert "PAGESYNC_DASHBOARD_USER" in resp.json()["message"]


def test_dev_mode_on_loopback_needs_no_login(stack_factory):
    st = stack_factory()
    st.start_server(args=["--dev"])
    assert requests.get(st.url + "/jobs", timeout=5).status_code == 200
    # a forged X-Forwarded-For does not change who is asking
    assert requests.get(st.url + "/jobs/api/snapshot", headers={"X-Forwarded-For": "203.0.113.9"},
                        timeout=5).status_code == 200
    # a page of another site re-pointing its name at 127.0.0.1 (DNS rebinding) gets no dev access
    resp = requests.get(st.url + "/jobs/api/snapshot", headers={"Host": "evil.example"}, timeout=5)
    assert resp.status_code in (401, 403)


def test_actions_need_the_csrf_token_and_servers_agree_on_it(stack_factory):
    st = auth_stack(stack_factory)
    auth = (USER, PASSWORD)
    token = csrf_from(requests.get(st.url + "/jobs", auth=auth, timeout=5).text)
    for path in ("/jobs/api/retry", "/jobs/api/discard"):
        for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": token[:-1]}):
            resp = requests.post(st.url + path, data={"all": "1"}, headers=headers, auth=auth, timeout=5)
            assert resp.status_code == 403, (path, headers)
            assert "CSRF" in resp.json()["message"]
        # no login at all: 401 before anything else
        assert requests.post(st.url + path, data={"all": "1"}, timeout=5).status_code == 401
    good = {"X-CSRF-Token": token}
    resp = requests.post(st.url + "/jobs/api/retry", data={"all": "1"}, headers=good, auth=auth, timeout=5)
    assert resp.status_code == 200 and resp.json()["retried"] == 0
    form = requests.post(st.url + "/jobs/api/discard", data={"all": "1", "csrf_token": token},
                         auth=auth, timeout=5)
    assert form.status_code == 200 and form.json()["discarded"] == 0
    # bad input: clear 4xx, never a 500
    for data, status in (({}, 400), ({"id": "nonsense"}, 400), ({"id": "visit:1:nope"}, 404)):
        resp = requests.post(st.url + "/jobs/api/retry", data=data, headers=good, auth=auth, timeout=5)
        assert resp.status_code == status, (data, resp.text)
        assert resp.json()["message"]
    for query, message in (("", "Give a record id"), ("?id=" + "x" * 600, "600 characters long"),
                           ("?id=%00%ff%fe", "not valid UTF-8")):
        resp = requests.get(st.url + "/jobs/api/record" + query, auth=auth, timeout=5)
        assert resp.status_code == 400 and message in resp.json()["message"], resp.text
    found = requests.get(st.url + "/jobs/api/record?id=%00x", auth=auth, timeout=5)
    assert found.status_code == 200 and found.json()["found"] is False
    assert requests.get(st.url + "/jobs/static/..%2Fdashboard.py", auth=auth, timeout=5).status_code == 404
    # a second server process on the same database accepts the same token
    other = stack_factory(dashboard_user=USER, dashboard_password=PASSWORD)
    other.settings = st.settings
    other.start_server()
    assert csrf_from(requests.get(other.url + "/jobs", auth=auth, timeout=5).text) == token


def test_loopback_and_credential_checks():
    from pagesync.dashboard import credentials_match, csrf_token, csrf_valid, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("10.0.0.1") and not is_loopback("") and not is_loopback(None)
    assert not is_loopback("203.0.113.9, 127.0.0.1")
    assert credentials_match(("ops", "pw"), "ops", "pw")
    assert not credentials_match(("ops", "pw "), "ops", "pw")
    assert not credentials_match(None, "", "")
    assert credentials_match(("zoë", "pässwörd"), "zoë", "pässwörd")
    token = csrf_token(b"secret-1", "ops")
    assert csrf_valid(b"secret-1", "ops", token)
    assert not csrf_valid(b"secret-2", "ops", token)  # another database's token
    assert not csrf_valid(b"secret-1", "someone", token)
    assert not csrf_valid(b"secret-1", "ops", "") and not csrf_valid(b"secret-1", "ops", "é" * 64)
