"""Bottle routes: the sync endpoint, stats, health. `make_app(settings)` builds the app;
`serve` runs it on cheroot, a multi-threaded production WSGI server."""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import re
import sys
import threading
import time
from datetime import datetime
from importlib import resources

import bottle

from . import dashboard, metrics, plain, processing, stats, store
from .body import PayloadError, json_bytes
from .config import Settings
from .queue import Reachability, deliver, make_huey, queue_depth, queued_in_batch

log = logging.getLogger("pagesync.web")
DATABASE_BUSY = Reachability("database")  # logs a run of 503s once, and when it is over
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together
LOCK_BUDGET = 5.0  # seconds a sync may wait for the database before its 503 (Retry-After)


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors=None, headers=None, data=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.errors, self.headers, self.data = errors or [], headers or {}, data


class RateLimiter:
    """Per-token token bucket: `per_minute` requests a minute, bursts up to `burst`
    (default: per_minute). per_minute 0 turns the limit off."""

    def __init__(self, per_minute: int, burst: int = 0):
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst > 0 else per_minute)
        self.buckets: dict = {}
        self.lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, last = self.buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.A)  # ASCII digits: "２０２６" is no year here
OPENAPI = json.loads(resources.files("pagesync").joinpath("openapi.json").read_text("utf-8"))
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def content_length(environ: dict) -> int | None:
    """The declared body length; None when absent (a chunked body), -1 when malformed."""
    raw = environ.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        return -1
    return value if value >= 0 else -1


def json_response(status: int, body: dict, headers: dict | None = None):
    resp = bottle.HTTPResponse(status=status, body=json.dumps(body, ensure_ascii=False))
    resp.set_header("Content-Type", "application/json; charset=utf-8")
    for k, v in (headers or {}).items():
        resp.set_header(k, str(v))
    return resp


def error_body(err: ApiError) -> dict:
    body = {"success": False, "message": err.message, "errors": err.errors}
    if err.data is not None:
        body["data"] = err.data
    return body


class App:
    """Shared state of one server process: settings, connections, queue, rate limiter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        store.init_db(settings.db)
        self.pool = store.ConnectionPool(settings.db, durable=True, timeout=5.0)
        # Batches are written one at a time per process (write_lock), on one connection
        # whose page cache stays warm from batch to batch; the log is checkpointed by a
        # thread of its own, not inside a batch's commit.
        self.writer = store.connect(settings.db, durable=True, timeout=LOCK_BUDGET, polls=True)
        self.writer.execute(f"PRAGMA wal_autocheckpoint = {store.WRITER_AUTOCHECKPOINT}")
        self.checkpointer = store.Checkpointer(settings.db).start()
        # Marking jobs 'queued' needs no fsync: if it is lost, the reconciler re-enqueues.
        self.light_pool = store.ConnectionPool(settings.db, durable=False, timeout=5.0)
        # One batch write at a time per process: threads queue here (handed over at once)
        # instead of polling SQLite's busy handler; processes still wait on SQLite's lock.
        self.write_lock = threading.Lock()
        self.huey = make_huey(settings)
        # A batch commits its jobs 'queued'. On the embedded default that queues them (the
        # jobs table is the queue); elsewhere (Redis, a queue file) their messages follow
        # in one round trip after the commit (`sends`). The naive bench baseline commits
        # them 'pending' and enqueues them one by one after the commit instead.
        self.queued = settings.enqueue_mode != "naive"
        self.sends = not (self.queued and queued_in_batch(self.huey))
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)

    def authenticate(self) -> dict:
        header = bottle.request.get_header("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Missing bearer token: send Authorization: Bearer <token>",
                           headers={"WWW-Authenticate": 'Bearer realm="pagesync"'})
        user = store.user_for_token(self.pool.get(), token.strip())
        if user is None:
            raise ApiError(401, "Unknown or revoked token",
                           headers={"WWW-Authenticate": 'Bearer realm="pagesync", error="invalid_token"'})
        wait = self.limiter.take(store.hash_token(token.strip()))
        if wait:
            raise ApiError(429, f"Rate limit exceeded: retry in {int(wait) + 1} s",
                           headers={"Retry-After": int(wait) + 1})
        return user

    def write(self, fn, *args):
        """Run a write transaction holding the process's write lock. The waits for this
        process's lock and then for SQLite's share one budget (LOCK_BUDGET seconds): no
        request waits longer for the database before its 503."""
        deadline = time.monotonic() + LOCK_BUDGET
        if not self.write_lock.acquire(timeout=LOCK_BUDGET):
            raise store.StorageBusy(f"writers queued for over {LOCK_BUDGET:g} s")
        try:
            self.writer.lock_timeout = max(0.001, deadline - time.monotonic())
            return fn(*args)
        finally:
            self.write_lock.release()

    def read_body(self) -> bytes:
        """The raw body, never more than the limit: a declared Content-Length over it is
        refused before reading (by `limit_body`), a chunked body as soon as it passes it.
        Reads wsgi.input directly: cheroot has already undone the chunked encoding."""
        limit = self.settings.max_body_bytes
        length = content_length(bottle.request.environ)
        stream = bottle.request.environ.get("wsgi.input")
        if stream is None or length == 0:
            return b""
        want = limit + 1 if length is None else min(length, limit + 1)
        parts, size = [], 0
        while size < want:
            try:
                part = stream.read(min(65536, want - size))
            except (ValueError, OverflowError, OSError) as exc:  # a bad chunk size, a dropped client
                raise ApiError(400, f"Body could not be read: {exc}")
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:
            raise ApiError(413, f"Body is over the limit of {limit} bytes")
        if length is not None and size < length:
            raise ApiError(400, f"Body ended after {size} of the {length} bytes announced "
                                "by Content-Length")
        return b"".join(parts)

    def sync(self):
        user = self.authenticate()
        raw = self.read_body()
        req = bottle.request
        try:
            limits = self.settings.payload_limits()
            data = json_bytes(raw, req.content_type, req.get_header("Content-Encoding"),
                              self.settings.max_body_bytes, limits,
                              self.settings.max_decompressed_bytes)
            batch = plain.parse_body(data, int(time.time() * 1000), limits)
        except PayloadError as exc:
            raise ApiError(exc.status, exc.message, exc.errors)
        report = {"rejected_records_count": len(batch.rejected), "rejected": batch.rejected,
                  "warnings": batch.warnings}
        if batch.rejected and not batch.visits and not batch.aggregates:
            raise ApiError(400, f"Every record was rejected ({len(batch.rejected)})",
                           [e for r in batch.rejected for e in r["errors"]][:100],
                           data={"page_visits_synced": 0, "tab_aggregates_synced": 0,
                                 "jobs_enqueued": 0, **report})
        # merging and the statements: worked out before the write lock is taken
        writes = store.plan(self.pool.get(), user["id"], batch, self.queued)
        saved = self.write(store.save_batch, self.writer, user["id"], batch, batch.client,
                           self.queued, user["token_id"], writes)
        DATABASE_BUSY.up()  # a batch was written: any run of 503s is over
        if self.settings.fault == "exit-after-commit":
            os._exit(3)  # test-only: the server dies between commit and enqueue
        if self.sends:
            deliver(self.light_pool.get(), self.huey, saved["jobs"], self.settings.enqueue_mode,
                    write=self.write, committed_queued=self.queued)
        nv, na = len(batch.visits), len(batch.aggregates)
        message = f"Synced {nv} page visits and {na} tab aggregates"
        if batch.rejected:
            message += f"; {len(batch.rejected)} records rejected"
        return json_response(200, {"success": True, "message": message, "data": {
            "page_visits_synced": nv, "tab_aggregates_synced": na, **report,
            "jobs_enqueued": len(saved["jobs"]), "sync_id": saved["sync_id"]}})

    def stats_daily(self):
        user = self.authenticate()
        tz = self.settings.timezone
        query = bottle.request.query
        day = query.getunicode("date")  # bottle's query values are latin-1 decoded
        if query.get("date") and day is None:
            raise ApiError(400, "date must be a day as YYYY-MM-DD, got text that is not UTF-8")
        day = day or processing.day_of(int(time.time() * 1000), tz)
        try:
            if not DATE.fullmatch(day):
                raise ValueError(day)
            datetime.strptime(day, "%Y-%m-%d")
        except ValueError:
            raise ApiError(400, f"date must be a day as YYYY-MM-DD, got {day[:40]!r}")
        hosts = stats.figures(self.pool.get(), user["id"], day, day, "host")
        return json_response(200, {"date": day, "timezone": tz, "hosts": hosts})

    def healthz(self):
        return json_response(200, {"status": "ok"})

    def readyz(self):
        problems = {}
        try:
            conn = self.pool.get()
            with store.transaction(conn):
                conn.execute("INSERT INTO counters (name, value) VALUES ('readyz', 0) "
                             "ON CONFLICT (name) DO NOTHING")
        except Exception as exc:
            problems["database"] = str(exc)
        if queue_depth(self.huey) < 0:
            problems["queue"] = f"unreachable: {self.settings.describe_queue()}"
        if problems:
            return json_response(503, {"status": "unavailable", "problems": problems},
                                 {"Retry-After": 5})
        return json_response(200, {"status": "ready"})

    def openapi(self):
        return json_response(200, OPENAPI)


def guarded(handler):
    """Every client-caused problem becomes a clear 4xx; storage trouble a 503; never a 500."""
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except ApiError as err:
            return json_response(err.status, error_body(err), err.headers)
        except store.StorageBusy as exc:
            DATABASE_BUSY.down(exc, "; syncs are answered 503 with Retry-After until it is free")
            return json_response(503, {"success": False, "message": "Storage busy, retry later",
                                       "errors": []}, {"Retry-After": 2})
        except bottle.HTTPResponse:
            raise
        except UnicodeError:  # a header bottle cannot decode (bytes that are not UTF-8)
            return json_response(400, {"success": False, "errors": [],
                                       "message": "Request headers must be ASCII or UTF-8"})
        except Exception:
            log.exception("unexpected error")
            return json_response(503, {"success": False, "errors": [],
                                       "message": "Temporarily unavailable, retry later"},
                                 {"Retry-After": 5})
    wrapper.__name__ = handler.__name__
    return wrapper


def limit_body(max_bytes: int):
    """before_request hook: a declared body over the limit is refused before it is read,
    on every route (cheroot then closes the connection instead of draining the body)."""
    def hook():
        length = content_length(bottle.request.environ)
        if length == -1:
            raise json_response(400, {"success": False, "errors": [],
                                      "message": "Content-Length must be a non-negative integer"})
        if length is not None and length > max_bytes:
            raise json_response(413, {"success": False, "errors": [], "message":
                                      f"Body is {length} bytes, over the limit of {max_bytes}"})
    return hook


def security_headers():
    """after_request hook: nosniff everywhere; CSP, frame and referrer policies on HTML.
    A header a handler set itself (e.g. a page's own CSP) is left alone."""
    resp = bottle.response
    resp.set_header("X-Content-Type-Options", "nosniff")
    ctype = (resp.content_type or resp.default_content_type).lower()  # unset: bottle sends HTML
    if ctype.startswith("text/html"):
        for name, value in HTML_HEADERS.items():
            if name not in resp.headers:
                resp.set_header(name, value)


ERROR_MESSAGES = {404: "No such endpoint: {method} {path}",
                  405: "Method {method} is not allowed on {path}"}


def error_page(err: bottle.HTTPError) -> str:
    """Bottle's own errors (unknown route, wrong method, ...) as JSON, never HTML."""
    req = bottle.request
    template = ERROR_MESSAGES.get(err.status_code)
    message = template.format(method=req.method, path=req.path[:200]) if template else err.status_line
    if err.status_code == 405 and bottle.response.get_header("Allow"):
        message += f" (allowed: {bottle.response.get_header('Allow')})"
    if err.status_code >= 500:
        log.error("unhandled error answering %s %s: %s", req.method, req.path[:200], err.body)
    bottle.response.content_type = "application/json; charset=utf-8"
    return json.dumps({"success": False, "message": message, "errors": []})


def make_app(settings: Settings) -> bottle.Bottle:
    state = App(settings)
    app = bottle.Bottle()
    app.config["pagesync.state"] = state
    app.add_hook("before_request", limit_body(settings.max_body_bytes))
    app.add_hook("after_request", security_headers)
    app.route("/api/v1/data/sync", "POST", guarded(state.sync))
    app.route("/api/v1/stats/daily", "GET", guarded(state.stats_daily))
    app.route("/api/v1/openapi.json", "GET", guarded(state.openapi))
    app.route("/healthz", "GET", guarded(state.healthz))
    app.route("/readyz", "GET", guarded(state.readyz))
    dashboard.mount(app, state)  # /jobs and the (protected) /api/v1/jobs snapshot
    metrics.mount(app, state)  # /metrics and the request latency histogram
    app.default_error_handler = error_page
    return app


def tune_gc() -> None:
    """A 1000-record batch makes some 50,000 dicts and lists, none in a reference cycle
    (freed as soon as the request is answered), and Python's cycle collector would run
    about 70 times over them, with full passes over everything the server holds besides.
    What is loaded by now is frozen out of its reach, and it runs every 20,000 new
    objects rather than every 700."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena, and each of cheroot's threads kept
    the memory of the 1000-record batches it parsed: 16 threads took the server from
    ~120 MB to ~220 MB peak RSS. Two arenas for the whole process (M_ARENA_MAX)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def json_error_connection():
    """cheroot's connection class whose own error answers (a malformed request line or
    header, refused before the app sees it) carry a JSON body with a `message`, like
    every answer of the app, instead of plain text."""
    from cheroot import server

    class StrictHeaders(server.HeaderReader):
        """Headers as cheroot reads them, but a request whose body's length two parties could
        read differently is a 400 (a proxy in front may have framed it the other way:
        request smuggling): Content-Length twice, or beside Transfer-Encoding, or not plain
        digits, or a header name with a space before its colon. cheroot kept the last
        Content-Length and waited for a body the client never sent."""
        seen = threading.local()

        def __call__(self, rfile, hdict=None):
            self.seen.names = []
            try:
                hdict = super().__call__(rfile, hdict)
            except UnboundLocalError:  # cheroot: a first header line that starts with a space
                raise ValueError("Illegal header line: a continuation with nothing to continue") from None
            names = self.seen.names
            if names.count(b"Content-Length") > 1:
                raise ValueError("Content-Length is sent more than once")
            if b"Content-Length" in names and b"Transfer-Encoding" in names:
                raise ValueError("Content-Length and Transfer-Encoding are both sent")
            length = hdict.get(b"Content-Length")
            if length is not None and not (length.isdigit() and length.isascii()):
                raise ValueError("Malformed Content-Length Header.")
            return hdict

        def _transform_key(self, key_name):
            if key_name != key_name.strip():
                raise ValueError("Illegal header line: white space around a header name")
            return key_name.title()

        def _allow_header(self, key_name):
            self.seen.names.append(key_name)
            return True

    class JsonErrorRequest(server.HTTPRequest):
        header_reader = StrictHeaders()

        def simple_response(self, status, msg=""):
            status = str(status)
            if isinstance(msg, bytes):
                msg = msg.decode("latin-1")
            body = json.dumps({"success": False, "message": msg or status}).encode()
            head = [f"{self.server.protocol} {status}", f"Content-Length: {len(body)}",
                    "Content-Type: application/json; charset=utf-8"]
            if status[:3] in ("413", "414") or not status.startswith(("1", "2", "3")):
                self.close_connection = True  # the rest of the request was not read
                head.append("Connection: close")
            try:
                self.conn.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            except OSError as exc:
                if exc.args and exc.args[0] not in server.errors.socket_errors_to_ignore:
                    raise

    class Connection(server.HTTPConnection):
        RequestHandlerClass = JsonErrorRequest

    return Connection


def serve(settings: Settings, host: str, port: int, threads: int = 16,
          reuse_port: bool = False) -> None:
    """Run the app on cheroot until SIGTERM/SIGINT."""
    limit_malloc_arenas()
    # A batch writer gives up the GIL for each SQLite call and then waits to get it back
    # from a thread that is parsing another request: up to the switch interval (5 ms by
    # default) per call, holding the write lock all that time. 1 ms bounds that wait.
    sys.setswitchinterval(0.001)
    import signal

    from cheroot import wsgi

    from .multiserve import CannotServe, check_port

    app = make_app(settings)
    tune_gc()
    server = wsgi.Server((host, port), app, numthreads=threads, request_queue_size=128,
                         server_name="pagesync", reuse_port=reuse_port)
    server.ConnectionClass = json_error_connection()
    # No cheroot body limit: the app refuses a declared length over the limit with a JSON
    # 413 before reading (limit_body) and reads a chunked body only up to the limit.
    server.max_request_body_size = 0
    # Headers are read before the token is checked: past 64 KiB they are a 413, not memory.
    server.max_request_header_size = MAX_HEADER_BYTES

    def stop(signum, frame):
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not reuse_port:
        check_port(host, port)  # a port in use: one line, before any "serving"
    try:
        server.prepare()  # binds: only then is it serving
    except OSError as exc:
        raise CannotServe(f"cannot listen on {host}:{port} ({exc})") from None
    log.info("pagesync serving on http://%s:%d (database %s, queue %s)", host, port,
             settings.db, settings.describe_queue())
    try:
        server.serve()
    finally:
        app.config["pagesync.state"].checkpointer.stop()
