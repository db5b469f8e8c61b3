"""`pagesync replay`: POST payload files to a server the way the extension does (visits and
aggregates in separate requests, at most `batch_size` records each), retrying 429/503 and
connection errors, and report what was stored and rejected."""
from __future__ import annotations

import gzip
import json
import signal
import threading
import time
import zlib
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

CLIENT_KEYS = ("anonymousClientId", "extensionVersion", "browserName", "browserVersion")
NOT_SENT = "not sent: interrupted"
UNREACHABLE = "not sent: the server was unreachable"
REFUSED = "not sent: the token was refused (401)"


@dataclass
class Request:
    source: str
    body: dict
    records: int


@dataclass
class ReplayResult:
    requests_ok: int = 0
    requests_failed: int = 0
    visits: int = 0
    aggregates: int = 0
    jobs: int = 0
    warnings: int = 0
    rejected: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    records: int = 0  # in the payload files
    records_answered: int = 0  # in requests that got their answer (or gave up)
    records_failed: int = 0  # in failed requests, less those the server listed as rejected
    interrupted: bool = False  # Ctrl-C: what was left was not sent
    records_unknown: int = 0  # in requests cut off by a second Ctrl-C: stored or not
    not_sent: str = ""  # why the rest was not sent: "interrupted", "the server was unreachable"...

    @property
    def stored(self) -> int:
        return self.visits + self.aggregates

    @property
    def records_unsent(self) -> int:
        return self.records - self.records_answered - self.records_unknown


def load_payloads(path: Path) -> list[dict]:
    """A file holds one payload object, a list of payload objects, or JSON lines."""
    text = path.read_bytes()
    try:
        if path.suffix == ".gz":
            text = gzip.decompress(text)
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        text = text.decode("utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not JSON or JSON lines ({exc})") from None
    items = data if isinstance(data, list) else [data]
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"{path}: expected payload objects, found {type(item).__name__}")
    return items


def split_requests(source: str, body: dict, batch_size: int) -> list[Request]:
    """Visits and aggregates in separate requests of at most batch_size records."""
    client = {k: body[k] for k in CLIENT_KEYS if k in body}
    out = []
    for key, other in (("pageVisits", "tabAggregates"), ("tabAggregates", "pageVisits")):
        records = body.get(key)
        if not isinstance(records, list) or not records:
            continue
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            out.append(Request(source, {**client, key: chunk, other: []}, len(chunk)))
    return out


def plan(paths: list[Path], batch_size: int) -> tuple[list[Request], list[Path]]:
    """(the requests of every file in order, the files that hold no record)."""
    out, empty = [], []
    for path in paths:
        before = len(out)
        for body in load_payloads(path):
            out.extend(split_requests(path.name, body, batch_size))
        if len(out) == before:
            empty.append(path)
    return out, empty


class Sender:
    def __init__(self, url: str, token: str, retries: int = 5, timeout: float = 60.0,
                 gzip_body: bool = False):
        self.url = url.rstrip("/") + "/api/v1/data/sync"
        self.token, self.retries, self.timeout, self.gzip = token, retries, timeout, gzip_body
        self._local = threading.local()
        self.unreachable = False
        self.refused = False  # a 401: every other request would get one too
        self.stopping = threading.Event()  # set on Ctrl-C: send nothing more, retry nothing

    def stop(self) -> None:
        self.stopping.set()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def send(self, req: Request) -> tuple[int, dict | None, str]:
        """(status, json body or None, error text). Retries 429/503 and connection errors,
        honouring Retry-After. The status is the last answer's (429 or 503 when the
        retries ran out on them); 0 only when no answer came (connection failed)."""
        data = json.dumps(req.body, ensure_ascii=False).encode("utf-8")
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if self.gzip:
            data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
        if self.stopping.is_set():
            return 0, None, NOT_SENT
        if self.unreachable:
            return 0, None, UNREACHABLE
        if self.refused:
            return 0, None, REFUSED
        delay, status, body, error = 0.5, 0, None, ""
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.post(self.url, data=data, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                status, body, wait = 0, None, delay
                error = f"connection failed: {exc.__class__.__name__}"
                if attempt == self.retries:  # the server stays away: send nothing more
                    self.unreachable = True
            else:
                status, body = resp.status_code, _json(resp)
                self.refused = self.refused or status == 401
                if status not in (429, 503):
                    return status, body, "" if resp.ok else _message(resp, body)
                error, wait = _message(resp, body), _retry_after(resp, delay)
            if attempt < self.retries:
                if self.stopping.wait(wait):  # Ctrl-C: no retry
                    return status, body, f"{error} (not retried: interrupted)"
                delay = min(delay * 2, 30)
        if self.retries:
            error += f" (gave up after {self.retries + 1} attempts)"
        return status, body, error


def _json(resp) -> dict | None:
    try:
        body = resp.json()
        return body if isinstance(body, dict) else None
    except ValueError:
        return None


def _message(resp, body) -> str:
    if body and body.get("message"):
        return str(body["message"])
    return f"HTTP {resp.status_code}"


def _retry_after(resp, default: float) -> float:
    try:
        return max(0.0, min(float(resp.headers.get("Retry-After", default)), 120.0))
    except ValueError:
        return default


def record_outcome(result: ReplayResult, req: Request, status: int, body: dict | None, error: str):
    data = (body or {}).get("data") or {}
    rejected = data.get("rejected") or []
    for item in rejected:
        result.rejected.append({"file": req.source, **item})
    result.warnings += len(data.get("warnings") or [])
    result.records_answered += req.records
    # 400 "every record was rejected" is an answer like a 200 with rejections: how records
    # are cut into requests (--batch-size) must not make the same records a failure
    if 200 <= status < 300 or (status == 400 and rejected and len(rejected) >= req.records):
        result.requests_ok += 1
        result.visits += data.get("page_visits_synced", 0)
        result.aggregates += data.get("tab_aggregates_synced", 0)
        result.jobs += data.get("jobs_enqueued", 0)
    else:
        result.requests_failed += 1
        result.records_failed += max(0, req.records - len(rejected))
        result.failures.append({"file": req.source, "status": status, "error": error,
                                "records": req.records})


def replay(requests_: list[Request], sender: Sender, concurrency: int = 1,
           on_done=None) -> ReplayResult:
    """Send every request (in order when concurrency is 1, like the extension), calling
    `on_done(req, result)` after each answer.

    Ctrl-C (SIGINT, when called from the main thread) stops it: nothing more is sent or
    retried, the requests on their way get their answer, and the result says
    `interrupted`, with what was stored so far. A second Ctrl-C does not wait for those
    answers either: their records are counted as `records_unknown`."""
    result = ReplayResult(records=sum(r.records for r in requests_))
    start = time.monotonic()

    def done(req, outcome):
        if outcome[2].startswith("not sent: "):  # counted as unsent, said once in the summary
            result.not_sent = result.not_sent or outcome[2][len("not sent: "):]
            return
        record_outcome(result, req, *outcome)
        if on_done:
            on_done(req, result)

    with _first_sigint_stops(sender):
        try:
            if concurrency <= 1:
                for req in requests_:
                    if sender.stopping.is_set():
                        break
                    try:
                        outcome = sender.send(req)
                    except KeyboardInterrupt:  # the second Ctrl-C, mid-request
                        result.records_unknown += req.records
                        raise
                    done(req, outcome)
            else:
                _send_concurrently(requests_, sender, concurrency, done, result)
        except KeyboardInterrupt:
            sender.stop()
    result.interrupted = sender.stopping.is_set()
    if result.interrupted:
        result.not_sent = "interrupted"
    result.seconds = time.monotonic() - start
    return result


def _send_concurrently(requests_, sender: Sender, concurrency: int, done, result) -> None:
    futures = _start_sending(requests_, sender, concurrency)
    i, cancelled = 0, False
    try:
        for i, future in enumerate(futures):
            if sender.stopping.is_set() and not cancelled:
                cancelled = True
                for f in futures[i:]:
                    f.cancel()  # those not started yet
            if not future.cancelled():
                done(requests_[i], future.result())
        i = len(futures)
    except KeyboardInterrupt:  # the second Ctrl-C: count what is known, leave the rest
        sender.stop()
        for req, future in zip(requests_[i:], futures[i:]):
            if future.done() and not future.cancelled():
                done(req, future.result())
            elif not future.cancel():  # on its way: the server may store it or not
                result.records_unknown += req.records
        raise


def _start_sending(requests_, sender: Sender, concurrency: int) -> list[Future]:
    """A future per request, sent by `concurrency` daemon threads in order: like a
    ThreadPoolExecutor, except that a request cut off by a second Ctrl-C does not hold
    the exit until its answer comes."""
    futures = [Future() for _ in requests_]
    todo = iter(range(len(requests_)))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            if not futures[i].set_running_or_notify_cancel():
                continue
            try:
                futures[i].set_result(sender.send(requests_[i]))
            except BaseException as exc:
                futures[i].set_exception(exc)

    for n in range(min(concurrency, len(requests_))):
        threading.Thread(target=work, name=f"replay-{n}", daemon=True).start()
    return futures


@contextmanager
def _first_sigint_stops(sender: Sender):
    """While sending, the first SIGINT stops the sender (KeyboardInterrupt only from the
    second one on): a Ctrl-C then cuts no request short and leaves no count half done."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield
        return

    def first(signum, frame):
        sender.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
