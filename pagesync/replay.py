"""`pagesync replay`: POST payload files to a server the way the extension does (visits and
aggregates in separate requests, at most `batch_size` records each), retrying 429/503 and
connection errors, and report what was stored and rejected."""
from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

CLIENT_KEYS = ("anonymousClientId", "extensionVersion", "browserName", "browserVersion")


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

    @property
    def stored(self) -> int:
        return self.visits + self.aggregates


def load_payloads(path: Path) -> list[dict]:
    """A file holds one payload object, a list of payload objects, or JSON lines."""
    text = path.read_bytes()
    if path.suffix == ".gz":
        text = gzip.decompress(text)
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


def plan(paths: list[Path], batch_size: int) -> list[Request]:
    out = []
    for path in paths:
        for body in load_payloads(path):
            out.extend(split_requests(path.name, body, batch_size))
    return out


class Sender:
    def __init__(self, url: str, token: str, retries: int = 5, timeout: float = 60.0,
                 gzip_body: bool = False):
        self.url = url.rstrip("/") + "/api/v1/data/sync"
        self.token, self.retries, self.timeout, self.gzip = token, retries, timeout, gzip_body
        self._local = threading.local()
        self.unreachable = False

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
        if self.unreachable:
            return 0, None, "not sent: the server was unreachable"
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
                if status not in (429, 503):
                    return status, body, "" if resp.ok else _message(resp, body)
                error, wait = _message(resp, body), _retry_after(resp, delay)
            if attempt < self.retries:
                time.sleep(wait)
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
    for item in data.get("rejected") or []:
        result.rejected.append({"file": req.source, **item})
    result.warnings += len(data.get("warnings") or [])
    if 200 <= status < 300:
        result.requests_ok += 1
        result.visits += data.get("page_visits_synced", 0)
        result.aggregates += data.get("tab_aggregates_synced", 0)
        result.jobs += data.get("jobs_enqueued", 0)
    else:
        result.requests_failed += 1
        result.failures.append({"file": req.source, "status": status, "error": error,
                                "records": req.records})


def replay(requests_: list[Request], sender: Sender, concurrency: int = 1,
           on_done=None) -> ReplayResult:
    """Send every request (in order when concurrency is 1, like the extension)."""
    result = ReplayResult()
    start = time.monotonic()

    def one(req):
        return req, *sender.send(req)

    if concurrency <= 1:
        outcomes = map(one, requests_)
    else:
        pool = ThreadPoolExecutor(concurrency)
        outcomes = pool.map(one, requests_)
    for req, status, body, error in outcomes:
        record_outcome(result, req, status, body, error)
        if on_done:
            on_done(req)
    result.seconds = time.monotonic() - start
    return result
