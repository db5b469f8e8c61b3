"""Issue 7: unknown routes and wrong methods answer JSON, never a 500 or an HTML page; no
file outside the static folder is ever served; HTML responses carry security headers."""
import base64
import io
import json
import socket
from wsgiref.util import setup_testing_defaults

import bottle
import pytest

from pagesync import web
from pagesync.config import Settings

from .conftest import make_stack

# Text that only the real files contain: served, it would mean a traversal worked.
DASHBOARD_LOGIN = "Basic " + base64.b64encode(b"ops:pw").decode()  # reaches /jobs/static/
SECRETS = (b"def save_batch", b"[build-system]", b"root:x:0:0", b"CREATE TABLE", b"SQLite format")
TRAVERSALS = [
    "/jobs/static/../../pagesync/store.py", "/jobs/static/%2e%2e/store.py", "/jobs/static/..%2fweb.py",
    "/jobs/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/jobs/static/..%2f..%2fpagesync.db",
    "/jobs/static/jobs.css/../../store.py", "/jobs/static/.%2e/dashboard.py", "/jobs/static//etc/passwd",
    "/jobs/static/%2fetc%2fpasswd", "/jobs/static/..\\web.py", "/jobs/static/%c0%ae%c0%ae/web.py",
    "/static/../pagesync/store.py", "/static/../../pyproject.toml", "/static/%2e%2e/store.py",
    "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2fstore.py", "/static/..%2f..%2fpyproject.toml",
    "/static/%2e%2e%2f%2e%2e%2fpagesync%2fstore.py", "/static//etc/passwd", "/static/....//store.py",
    "/static/%252e%252e/store.py", "/static/..\\store.py", "/static/%c0%ae%c0%ae/store.py",
    "/../pagesync/store.py", "/static/../pagesync.db", "/pagesync.db", "/static/%00../store.py",
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    st = make_stack(tmp_path_factory.mktemp("http"), dashboard_user="ops", dashboard_password="pw")
    st.start_server()
    yield st
    st.stop()


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """Send the request target exactly as written (clients would normalise `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Authorization: {DASHBOARD_LOGIN}\r\n\r\n".encode())
        data = b""
        while part := sock.recv(65536):
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nothing/here", 404), ("GET", "/api/v1/data/sync", 405), ("PUT", "/api/v1/data/sync", 405),
    ("DELETE", "/healthz", 405), ("POST", "/api/v1/stats/daily", 405), ("GET", "/api/v1/data/sync/", 404),
    ("GET", "/api/v2/data/sync", 404), ("OPTIONS", "/api/v1/jobs", 405), ("PATCH", "/x%00y", 404),
    ("GET", "/" + "a" * 4000, 404), ("GET", "/%ff%fe", 404),
])
def test_unknown_routes_and_wrong_methods_answer_json(live, method, path, status):
    code, headers, body = raw_get(live.port, path, method)
    assert code == status, body[:200]
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    answer = json.loads(body)
    assert answer["success"] is False and answer["message"]
    if status == 405:
        assert "allowed" in answer["message"] and headers.get("allow")


@pytest.mark.parametrize("target", TRAVERSALS)
def test_no_file_outside_the_static_folder_is_served(live, target):
    code, headers, body = raw_get(live.port, target)
    assert code in (400, 403, 404), (target, code)
    assert not any(secret in body for secret in SECRETS), target


def test_the_static_folder_itself_is_served(live):
    """So the traversal attempts above do reach the static route's neighbourhood."""
    code, headers, body = raw_get(live.port, "/jobs/static/jobs.css")
    assert code == 200 and headers["content-type"].startswith("text/css") and body


def test_html_responses_carry_security_headers():
    """The after_request hook on a real app object; the dashboard's pages go through it too."""
    app = web.make_app(Settings(db=":memory:", queue="sqlite:///" + "/tmp/unused-queue.db"))

    @app.route("/probe-page")
    def page():
        return "<html><body>hi</body></html>"

    @app.route("/probe-own-csp")
    def own():
        bottle.response.set_header("Content-Security-Policy", "default-src 'none'")
        return "<p>own</p>"

    for path, csp in (("/probe-page", web.HTML_HEADERS["Content-Security-Policy"]),
                      ("/probe-own-csp", "default-src 'none'")):
        status, headers = call(app, path)
        assert status.startswith("200") and headers["Content-Type"].startswith("text/html")
        assert headers["Content-Security-Policy"] == csp
        assert "frame-ancestors 'none'" in web.HTML_HEADERS["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers = call(app, "/healthz")
    assert headers["Content-Type"].startswith("application/json")
    assert "X-Frame-Options" not in headers and headers["X-Content-Type-Options"] == "nosniff"


def test_every_html_page_the_live_server_serves_has_the_headers(live):
    """Whatever HTML the server answers (the /jobs dashboard once it exists) carries them."""
    for path in ("/jobs", "/jobs/", "/", "/static/", "/nothing"):
        code, headers, _ = raw_get(live.port, path)
        assert code < 500
        if headers.get("content-type", "").startswith("text/html"):
            assert "frame-ancestors" in headers["content-security-policy"], path
            assert headers["x-frame-options"] in ("DENY", "SAMEORIGIN"), path
            assert headers["referrer-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path


def call(app, path: str) -> tuple[str, dict]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, dict(headers)

    b"".join(app(environ, start_response))
    return out["status"], out["headers"]


def raw_request(port: int, head: bytes, body: bytes = b"", half_close: bool = False) -> tuple[int, bytes]:
    """Send a request byte for byte (headers a client library would refuse to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while part := sock.recv(65536):
            data += part
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def sync_head(token: str, *extra: bytes) -> bytes:
    return b"\r\n".join([b"POST /api/v1/data/sync HTTP/1.1", b"Host: x", b"Connection: close",
                         b"Content-Type: application/json", b"Authorization: Bearer " + token.encode(),
                         *extra])


@pytest.fixture(scope="module")
def live_token(live):
    return live.token()


@pytest.mark.parametrize("name, head, body, half_close, status, words", [
    ("header not UTF-8", lambda t: sync_head(t, b"Content-Length: 2").replace(
        b"Bearer " + t.encode(), b"Bearer \xe9"), b"{}", False, 400, b"ASCII or UTF-8"),
    ("encoding not UTF-8", lambda t: sync_head(t, b"Content-Length: 2", b"Content-Encoding: gzip\xe9"),
     b"{}", False, 400, b"ASCII or UTF-8"),
    ("bad chunk size", lambda t: sync_head(t, b"Transfer-Encoding: chunked"), b"zz\r\n{}\r\n0\r\n\r\n",
     False, 400, b"Body could not be read"),
    ("body shorter than announced", lambda t: sync_head(t, b"Content-Length: 100"), b"{}", True, 400,
     b"Body ended after 2 of the 100 bytes"),
    # refused by the HTTP server before the app sees them: the same JSON shape
    ("Content-Length not a number", lambda t: sync_head(t, b"Content-Length: abc"), b"{}", False, 400,
     b"Malformed Content-Length"),
    ("Content-Length twice", lambda t: sync_head(t, b"Content-Length: 2", b"Content-Length: 3"), b"{}",
     False, 400, b"Content-Length is sent more than once"),
    ("Content-Length twice, the same", lambda t: sync_head(t, b"Content-Length: 2", b"content-length: 2"),
     b"{}", False, 400, b"Content-Length is sent more than once"),
    ("Content-Length beside chunked", lambda t: sync_head(t, b"Content-Length: 7", b"Transfer-Encoding: chunked"),
     b"2\r\n{}\r\n0\r\n\r\n", False, 400, b"Content-Length and Transfer-Encoding are both sent"),
    ("space before a header's colon", lambda t: sync_head(t, b"Content-Length : 2"), b"{}", False, 400,
     b"white space around a header name"),
    ("Content-Length with a sign", lambda t: sync_head(t, b"Content-Length: +2"), b"{}", False, 400,
     b"Malformed Content-Length"),
    ("first header line folded", lambda t: sync_head(t, b"Content-Length: 2").replace(b"\r\nHost", b"\r\n Host"),
     b"{}", False, 400, b"a continuation with nothing to continue"),
    ("chunk size past any integer", lambda t: sync_head(t, b"Transfer-Encoding: chunked"),
     b"ffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", False, 400, b"Body could not be read"),
    ("header line without a colon", lambda t: sync_head(t, b"Nonsense"), b"", False, 400,
     b"Illegal header line"),
    ("request line of one word", lambda t: b"GARBAGE", b"", False, 400, b"Malformed Request-Line"),
])
def test_malformed_requests_get_a_4xx_with_a_message(live, live_token, name, head, body, half_close,
                                                      status, words):
    got, text = raw_request(live.port, head(live_token), body, half_close)
    assert got == status, (name, text)
    assert words in text and json.loads(text)["success"] is False


def test_stats_with_a_header_that_is_not_utf8_is_a_400(live):
    got, text = raw_request(live.port, b"GET /api/v1/stats/daily HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\nAuthorization: Bearer \xe9")
    assert got == 400 and b"ASCII or UTF-8" in text


def test_headers_past_64_kib_are_a_413_not_memory(live):
    """Headers are read before the token is checked: anyone could send 300 MB of them."""
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 70_000
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(big)  # no end of headers: the server refuses as soon as it passes 64 KiB
        data = sock.recv(65536)
    status, _, rest = data.partition(b"\r\n")
    assert status.split()[1] == b"413", data[:200]
    assert b"The headers sent with the request exceed the maximum allowed bytes" in rest
    assert raw_get(live.port, "/healthz")[0] == 200
