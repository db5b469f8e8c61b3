"""The /jobs web dashboard (the Sidekiq Web UI's role): one HTML page whose script polls
/jobs/api/snapshot, a record lookup, and Retry / Discard actions.

Protection: HTTP Basic with PAGESYNC_DASHBOARD_USER / _PASSWORD (compared in constant
time), except under `serve --dev` for clients on the loopback interface. Actions are POSTs
that carry a CSRF token: an HMAC of the user name under a per-database secret kept in
SQLite, so every server process on one database agrees. All data reaches the page as JSON
and is put in the DOM with textContent; HTML responses carry a strict CSP."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from pathlib import Path

import bottle

from . import jobstate, monitor, store
from .queue import deliver

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATE = HERE / "templates" / "jobs.tpl"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_RECORD_ID = 512


# ---------------------------------------------------------------- pure helpers

def record_id_problem(raw: str | None) -> str | None:
    """What is wrong with the ?id= of a record lookup (`raw` as WSGI gives it: latin-1)."""
    if raw is None or not raw.strip():
        return f"Give a record id (1 to {MAX_RECORD_ID} characters): /jobs/api/record?id=..."
    try:
        text = raw.encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        return "The record id is not valid UTF-8"
    if len(text) > MAX_RECORD_ID:
        return f"The record id is {len(text)} characters long; ids are at most {MAX_RECORD_ID}"
    return None


def is_loopback(addr: str | None) -> bool:
    try:
        return ipaddress.ip_address((addr or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def is_local_host_header(host: str) -> bool:
    """The Host a loopback browser sends: a page of another site that re-pointed its own
    name at 127.0.0.1 (DNS rebinding) sends that name instead, and gets no dev access."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    return name == "localhost" or is_loopback(name)


def credentials_match(given: tuple | None, user: str, password: str) -> bool:
    """Constant-time comparison of (user, password) against the configured pair."""
    got_user, got_pw = given or ("", "")
    ok_user = hmac.compare_digest(got_user.encode("utf-8"), user.encode("utf-8"))
    ok_pw = hmac.compare_digest(got_pw.encode("utf-8"), password.encode("utf-8"))
    return given is not None and ok_user and ok_pw


def csrf_token(secret: bytes, user: str) -> str:
    return hmac.new(secret, b"pagesync-csrf:" + user.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, user: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(secret, user).encode(),
                                               given.encode("utf-8", "replace"))


def stored_secret(conn) -> bytes:
    """The database's CSRF secret, created once; every server process on it reads the same."""
    with store.transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS app_secrets (name TEXT PRIMARY KEY, "
                     "value TEXT NOT NULL)")
        conn.execute("INSERT INTO app_secrets (name, value) VALUES ('csrf', ?) "
                     "ON CONFLICT (name) DO NOTHING", (secrets.token_hex(32),))
    return conn.execute("SELECT value FROM app_secrets WHERE name = 'csrf'").fetchone()[0].encode()


def deny(status: int, message: str, headers: dict | None = None) -> bottle.HTTPResponse:
    resp = bottle.HTTPResponse(status=status, body=json.dumps({"success": False, "message": message}))
    resp.set_header("Content-Type", "application/json; charset=utf-8")
    for k, v in (headers or {}).items():
        resp.set_header(k, v)
    return resp


def with_security_headers(out):
    target = out if isinstance(out, bottle.HTTPResponse) else bottle.response
    for k, v in SECURITY_HEADERS.items():
        target.set_header(k, v)
    return out


# ---------------------------------------------------------------- the dashboard

class Dashboard:
    def __init__(self, state):
        self.state = state  # web.App: settings, pool, huey
        self.settings = state.settings
        self._secret: bytes | None = None
        self.template = bottle.SimpleTemplate(TEMPLATE.read_text(encoding="utf-8"))

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            configured = self.settings.secret
            self._secret = configured.encode() if configured else store.with_retry(
                lambda: stored_secret(self.state.pool.get()))
        return self._secret

    def authorize(self) -> str:
        """The signed-in user's name, or raise 401/403."""
        s = self.settings
        if s.dev and is_loopback(bottle.request.environ.get("REMOTE_ADDR")) \
                and is_local_host_header(bottle.request.get_header("Host", "")):
            return "dev"
        if not (s.dashboard_user and s.dashboard_password):
            raise deny(403, "The /jobs dashboard needs a login: set PAGESYNC_DASHBOARD_USER and "
                            "PAGESYNC_DASHBOARD_PASSWORD for `pagesync serve` (or use "
                            "`pagesync serve --dev` and browse from 127.0.0.1)")
        given = bottle.parse_auth(bottle.request.get_header("Authorization", ""))
        if not credentials_match(given, s.dashboard_user, s.dashboard_password):
            raise deny(401, "Sign in with the dashboard user and password",
                       {"WWW-Authenticate": 'Basic realm="pagesync jobs", charset="UTF-8"'})
        return s.dashboard_user

    def check_csrf(self, user: str) -> None:
        given = bottle.request.get_header("X-CSRF-Token") or bottle.request.forms.get("csrf_token")
        if not csrf_valid(self.secret, user, given):
            raise deny(403, "Missing or wrong CSRF token: reload the /jobs page and try again")

    def protect(self, handler, action: bool = False):
        """Authentication (+ CSRF for actions) and security headers around a handler."""
        def wrapper(*args, **kwargs):
            try:
                user = self.authorize()
                if action:
                    self.check_csrf(user)
                out = handler(user, *args, **kwargs)
            except bottle.HTTPResponse as resp:
                out = resp
            return with_security_headers(out)
        wrapper.__name__ = handler.__name__
        return wrapper

    # -------------------------------------------------------------- pages and JSON

    def page(self, user: str):
        bottle.response.set_header("Content-Type", "text/html; charset=utf-8")
        return self.template.render(user=user, csrf=csrf_token(self.secret, user),
                                    queue=self.settings.queue_kind)

    def snapshot(self, user: str):
        snap = monitor.snapshot(self.state.pool.get(), self.state.huey,
                                self.settings.worker_heartbeat)
        return json_ok(snap)

    def record(self, user: str):
        problem = record_id_problem(bottle.request.query.get("id"))
        if problem:
            raise deny(400, problem)
        record_id = bottle.request.query.getunicode("id").strip()
        jobs = monitor.record_jobs(self.state.pool.get(), record_id)
        return json_ok({"record_id": record_id, "found": bool(jobs), "jobs": jobs})

    def static(self, user: str, name: str):
        return bottle.static_file(name, root=str(STATIC))

    def retry(self, user: str):
        conn = self.state.pool.get()
        try:
            jobs = jobstate.retry(conn, self.job_ids())
        except LookupError as exc:
            raise deny(404, str(exc))
        delivered = deliver(conn, self.state.huey, jobs)
        return json_ok({"success": True, "retried": len(jobs), "enqueued": delivered})

    def discard(self, user: str):
        try:
            n = jobstate.discard(self.state.pool.get(), self.job_ids())
        except LookupError as exc:
            raise deny(404, str(exc))
        return json_ok({"success": True, "discarded": n})

    def job_ids(self) -> list | None:
        """Job ids from the form (`id`, repeatable) or None for `all=1`; checked here."""
        forms = bottle.request.forms
        ids = [i.strip() for i in forms.getall("id") if i.strip()]
        if forms.get("all") == "1" and not ids:
            return None
        if not ids or len(ids) > 1000:
            raise deny(400, "Give 1 to 1000 job ids (form field `id`) or all=1")
        for value in ids:
            try:
                jobstate.parse_job_id(value)
            except ValueError as exc:
                raise deny(400, str(exc)[:300])
        return ids


def json_ok(body: dict) -> bottle.HTTPResponse:
    resp = bottle.HTTPResponse(status=200, body=json.dumps(body, default=str, ensure_ascii=False))
    resp.set_header("Content-Type", "application/json; charset=utf-8")
    return resp


def mount(app: bottle.Bottle, state) -> Dashboard:
    """Add the /jobs routes (and the protected /api/v1/jobs snapshot) to the app."""
    from .web import guarded

    dash = Dashboard(state)
    routes = [
        ("/jobs", "GET", dash.page, False), ("/jobs/", "GET", dash.page, False),
        ("/jobs/api/snapshot", "GET", dash.snapshot, False),
        ("/api/v1/jobs", "GET", dash.snapshot, False),
        ("/jobs/api/record", "GET", dash.record, False),
        ("/jobs/static/<name:re:[a-z0-9_-]+\\.(?:css|js|svg)>", "GET", dash.static, False),
        ("/jobs/api/retry", "POST", dash.retry, True),
        ("/jobs/api/discard", "POST", dash.discard, True),
    ]
    for rule, method, handler, action in routes:
        app.route(rule, method, guarded(dash.protect(handler, action)))
    return dash
