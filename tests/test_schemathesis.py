"""Issue 7: the OpenAPI document is a checked contract. Schemathesis generates requests for
every operation in the document the LIVE server serves, sends them to a real server process
with a valid token, and checks every answer: never a 5xx, only documented status codes,
documented content types, bodies and headers matching the document."""
import base64
import json
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import pagesync

from .conftest import make_stack
from .helpers import reference

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, ignored_auth]
BASIC = "Basic " + base64.b64encode(b"ops:s3cret-pw").decode()
OPERATIONS = {"POST /api/v1/data/sync", "GET /api/v1/stats/daily", "GET /api/v1/jobs",
              "GET /api/v1/openapi.json", "GET /healthz", "GET /readyz"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One server process for the whole module, with a user who already has data."""
    st = make_stack(tmp_path_factory.mktemp("schemathesis"), dashboard_user="ops",
                    dashboard_password="s3cret-pw")
    st.start_server()
    token = st.token("fuzz")
    assert st.sync(token, reference("extension_visits.json")).status_code == 200
    yield st, token
    st.stop()


# The document in the repository; the first test checks the live server serves exactly it.
# (A lazy `schemathesis.pytest.from_fixture` schema would load it from the server, but that
# path of schemathesis 4.32 breaks on pytest 9.2: `Function` has no `_nodeid`.)
DOCUMENT = Path(pagesync.__file__).with_name("openapi.json")
schema = schemathesis.openapi.from_path(str(DOCUMENT))


def test_document_is_served_and_describes_every_json_endpoint(live):
    st, _ = live
    resp = requests.get(st.url + "/api/v1/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    served = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    assert served == OPERATIONS
    assert json.loads(DOCUMENT.read_text("utf-8")) == doc  # the file in the repo is what is served
    sync = doc["paths"]["/api/v1/data/sync"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "429", "503"} <= set(sync)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case, live):
    st, token = live
    started = time.monotonic()
    # the sync API takes a user's bearer token, /api/v1/jobs the dashboard's login
    auth = BASIC if case.path == "/api/v1/jobs" else f"Bearer {token}"
    response = case.call_and_validate(base_url=st.url, headers={"Authorization": auth}, checks=CHECKS,
                                      timeout=15)
    assert response.status_code < 500, response.text
    assert time.monotonic() - started < 15


def test_server_survived_the_run_and_logged_no_traceback(live):
    st, token = live
    assert requests.get(st.url + "/healthz", timeout=5).status_code == 200
    assert st.sync(token, reference("extension_visits.json")).status_code == 200
    log = (st.tmp / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]

