"""Issue 7: every limit answers with a clear 4xx, a refused request stores nothing, and a
hostile body (gzip bomb, deep nesting) costs the server bounded memory. Real server
processes; limits set per deployment through PAGESYNC_* settings."""
import gzip
import http.client
import json
import socket
import struct
import subprocess
import sys
import time
import zlib

import psutil
import pytest

from pagesync import procs
from pagesync.web import RateLimiter

from .conftest import make_stack
from .helpers import reference, row_count

LIMIT = 1_500_000
T0 = 1_764_547_200_000


def visits(n: int, prefix: str = "pv") -> dict:
    return {"pageVisits": [{"id": f"{prefix}_{i}", "url": f"https://site{i % 7}.example/p/{i}",
                            "startedAt": T0 + i * 1000, "duration": 5000} for i in range(n)],
            "tabAggregates": []}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server with a 1.5 MB body limit (as sent and after gzip) and no rate limit."""
    st = make_stack(tmp_path_factory.mktemp("limits"), max_body_bytes=LIMIT,
                    max_decompressed_bytes=LIMIT, rate_limit_per_minute=0)
    st.start_server()
    yield st, st.token("alice")
    st.stop()


def stored(st) -> tuple:
    conn = st.conn()
    return row_count(conn, "page_visits"), row_count(conn, "syncs"), row_count(conn, "jobs")


def assert_refused(st, before, resp, status: int, words: str):
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["success"] is False
    assert words in body["message"], body["message"]
    assert stored(st) == before


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side normalising), return (status, response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    return int(data.split(b" ", 2)[1]), data


def test_declared_body_over_the_limit_is_413_before_reading_it(limited):
    st, token = limited
    before = stored(st)
    head = (f"POST /api/v1/data/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 ** 9}\r\n\r\n").encode()
    started = time.monotonic()
    status, data = raw_request(st.port, head, b'{"pageVisits": [')  # 1 GB promised, 16 bytes sent
    assert status == 413
    assert time.monotonic() - started < 5  # answered without waiting for the body
    assert b"over the limit of 1500000" in data
    assert b"application/json" in data and b"Connection: close" in data
    assert stored(st) == before


def test_body_over_the_limit_is_413(limited):
    st, token = limited
    before = stored(st)
    resp = st.sync(token, None, raw=b" " * (LIMIT + 1))
    assert_refused(st, before, resp, 413, "over the limit of 1500000")


def test_chunked_body_over_the_limit_is_413_while_reading(limited):
    st, token = limited
    before = stored(st)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=20)
    conn.putrequest("POST", "/api/v1/data/sync")
    for name, value in (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
                        ("Transfer-Encoding", "chunked")):
        conn.putheader(name, value)
    conn.endheaders()
    chunk = b" " * 65536
    try:
        for _ in range(LIMIT // len(chunk) + 2):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once it has refused the body
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 413
    assert "over the limit of 1500000" in body["message"]
    assert stored(st) == before


def test_chunked_body_under_the_limit_is_stored(limited):
    st, token = limited
    raw = json.dumps(visits(3, "chunked")).encode()
    resp = st.sync(token, None, raw=iter([raw[:10], raw[10:]]))  # a generator: chunked encoding
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"]["page_visits_synced"] == 3


def gzip_bomb() -> bytes:
    """A valid gzip stream of exactly 1 GiB of zeros, about 1 MB long. Compressing 1 GiB
    takes 15 s on a busy machine, so the deflate stream is built from one compressed
    megabyte: after a full flush each further megabyte of zeros compresses to the same bytes."""
    mb = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = comp.compress(mb) + comp.flush(zlib.Z_FULL_FLUSH)
    repeat = comp.compress(mb) + comp.flush(zlib.Z_FULL_FLUSH)
    last = comp.compress(mb) + comp.flush()
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(mb, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + first + repeat * 1022 + last + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)


def test_gzip_bomb_is_413_and_server_memory_stays_bounded(limited):
    st, token = limited
    bomb = gzip_bomb()
    assert len(bomb) < LIMIT  # small enough on the wire: only decompression can catch it
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bomb, 8 << 20) == bytes(8 << 20)
    server = psutil.Process(st.server.pid)
    rss_before = server.memory_info().rss
    before = stored(st)
    resp = st.sync(token, None, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert_refused(st, before, resp, 413, "decompresses to over the limit of 1500000")
    growth = server.memory_info().rss - rss_before
    assert growth < 60 * 1024 * 1024, f"server grew by {growth / 1e6:.0f} MB"
    # a gzip body under the limit is fine
    resp = st.sync(token, None, raw=gzip.compress(json.dumps(visits(2, "gz")).encode()),
                   headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200 and resp.json()["data"]["page_visits_synced"] == 2


def test_deep_nesting_is_400_quickly_in_bounded_memory(limited):
    st, token = limited
    server = psutil.Process(st.server.pid)
    rss_before = server.memory_info().rss
    before = stored(st)
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"pageVisits": [{"metadata": ' + b'{"a": ' * 140
                + b"1" + b"}" * 140 + b"}]}", b'{"a": ' * 150_000,
                # past the interpreter's recursion limit inside a record of a valid body
                b'{"pageVisits": [{"id": "x", "url": "https://a.com/", "metadata": '
                + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}]}",
                b'{"pageVisits": [' + b"[" * 5000 + b"]" * 5000 + b"]}"):
        started = time.monotonic()
        resp = st.sync(token, None, raw=raw)
        assert_refused(st, before, resp, 400, "over the limit of 128")
        assert time.monotonic() - started < 5
    assert server.memory_info().rss - rss_before < 60 * 1024 * 1024


def test_metadata_nested_too_deep_rejects_that_record_and_keeps_the_rest(limited):
    st, token = limited
    deep = {"a": 1}
    for _ in range(42):
        deep = {"a": deep}
    batch = visits(3, "deepmeta")
    batch["pageVisits"][1]["metadata"] = deep
    slow = json.loads(json.dumps(batch))  # a 23-digit integer: the standard library's path
    slow["pageVisits"][0]["metadata"] = {"big": 12345678901234567890123}
    for body in (batch, slow):
        resp = st.sync(token, body)
        assert resp.status_code == 200, resp.text[:300]
        data = resp.json()["data"]
        assert data["page_visits_synced"] == 2
        [rejected] = data["rejected"]
        assert rejected["id"] == "deepmeta_1"
        assert rejected["errors"] == [{"field": "metadata",
                                       "message": "is nested deeper than 32 levels"}]
    conn = st.conn()
    ids = {r[0] for r in conn.execute("SELECT id FROM page_visits WHERE id LIKE 'deepmeta%'")}
    assert ids == {"deepmeta_0", "deepmeta_2"}


def test_a_million_tiny_objects_is_413_before_parsing(limited):
    st, token = limited
    before = stored(st)
    raw = b'{"pageVisits": [' + b",".join([b"{}"] * 300_000) + b"]}"
    resp = st.sync(token, None, raw=raw)
    assert_refused(st, before, resp, 413, "arrays and objects, over the limit of 200000")


def test_1001_records_is_400_and_1000_are_stored(limited):
    st, token = limited
    before = stored(st)
    resp = st.sync(token, visits(1001, "many"))
    assert_refused(st, before, resp, 400, "Too many records: 1001 in one request, the limit is 1000")
    resp = st.sync(token, visits(1000, "many"))
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["data"]["page_visits_synced"] == 1000


def test_every_record_rejected_is_400_and_stores_nothing(limited):
    st, token = limited
    before = stored(st)
    bad = {"pageVisits": [{"id": "x", "url": "javascript:1", "startedAt": T0},
                          {"id": "y", "url": "https://a.example/", "startedAt": 1_700_000_000}]}
    resp = st.sync(token, bad)
    assert_refused(st, before, resp, 400, "Every record was rejected (2)")
    data = resp.json()["data"]
    assert data["rejected_records_count"] == 2
    assert "looks like seconds" in data["rejected"][1]["errors"][0]["message"]


def test_wrong_content_type_and_encoding_are_415(limited):
    st, token = limited
    before = stored(st)
    resp = st.sync(token, None, raw=b"{}", headers={"Content-Type": "text/plain"})
    assert_refused(st, before, resp, 415, "Content-Type must be application/json")
    resp = st.sync(token, None, raw=b"{}", headers={"Content-Encoding": "br"})
    assert_refused(st, before, resp, 415, "Content-Encoding br is not supported")


# ---------------------------------------------------------------- rate limit

def test_rate_limiter_refills_per_token():
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.take("a", now=100.0) == 0 and limiter.take("a", now=100.0) == 0
    assert limiter.take("a", now=100.0) == pytest.approx(1.0)
    assert limiter.take("b", now=100.0) == 0  # another token has its own bucket
    assert limiter.take("a", now=101.01) == 0  # one request a second comes back
    assert limiter.take("a", now=0.0 + 101.02) > 0
    assert RateLimiter(per_minute=0).take("a") == 0  # 0 turns the limit off


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """A server allowing 20 requests a minute per token, 2 at once."""
    st = make_stack(tmp_path_factory.mktemp("rate"), rate_limit_per_minute=20, rate_limit_burst=2)
    st.start_server()
    yield st
    st.stop()


def test_past_the_rate_is_429_with_retry_after_and_stores_nothing(rated):
    st = rated
    token, other = st.token("bob"), st.token("carol")
    assert st.sync(token, visits(2, "r1")).status_code == 200
    assert st.sync(token, visits(2, "r2")).status_code == 200
    before = stored(st)
    resp = st.sync(token, visits(2, "r3"))
    assert_refused(st, before, resp, 429, "Rate limit exceeded")
    assert 1 <= int(resp.headers["Retry-After"]) <= 3
    # the limit is per token: another user is not slowed down
    assert st.sync(other, visits(1, "c1")).status_code == 200
    assert stored(st)[0] == 5


def test_replay_honours_retry_after(rated, tmp_path):
    """With one retry, replay only gets through a 3 s Retry-After by waiting for it (its own
    backoff would retry after 0.5 s and be refused again)."""
    st = rated
    token = st.token("dave")
    files = []
    for i in range(4):
        f = tmp_path / f"batch{i}.json"
        f.write_text(json.dumps(visits(5, f"replay{i}")))
        files.append(str(f))
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pagesync", "replay", *files, "--url", st.url,
                          "--token", token, "--retries", "1", "--json"], capture_output=True,
                         text=True, timeout=60, env=procs.child_env(st.settings))
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert summary["requests_ok"] == 4 and summary["requests_failed"] == 0
    assert summary["visits"] == 20
    assert elapsed >= 5.5  # two requests waited the 3 s the server asked for
    assert st.conn().execute("SELECT COUNT(*) FROM page_visits WHERE id LIKE 'replay%'").fetchone()[0] == 20


def test_unpaired_surrogate_escapes_are_stored_not_a_503(limited):
    st, token = limited
    raw = (b'{"pageVisits": [{"id": "sur_1", "url": "https://s.example/", "startedAt": %d, '
           b'"title": "broken \\ud800 emoji \\ud83d\\ude00", "metadata": {"k\\udfff": "v"}}]}' % T0)
    resp = st.sync(token, None, raw=raw)
    assert resp.status_code == 200, resp.text
    row = st.conn().execute("SELECT data ->> '$.title' AS title, data FROM page_visits WHERE id = 'sur_1'").fetchone()
    assert row["title"] == "broken \ufffd emoji \U0001F600"
    assert json.loads(row["data"])["metadata"] == {"k\ufffd": "v"}
