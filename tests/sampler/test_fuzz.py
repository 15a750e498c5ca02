"""The sampler's HTTP API fuzzed from its own OpenAPI document (schemathesis): every operation,
requests that the schema allows and requests that violate it, against a real server process on
the tiny model. Every answer must be documented (status code, content type, body schema), no
answer may be a 5xx, schema-violating requests must be refused with a 4xx, and the server must
still be healthy afterwards.

Bounded here (``SAMPLER_FUZZ_EXAMPLES`` examples per operation and generation mode, 100 by
default); ``benchmarks/sampler_fuzz.py`` runs the same test with more than 10,000 requests
and prints what they got.

Left out on purpose: schemathesis' ``positive_data_acceptance`` check, which expects every
schema-valid request to succeed. The limits are configuration (``SAMPLER_MAX_STEPS``, ...) and
combinations (steps x strength, the pipeline kind deciding whether an input image is allowed)
that the document does not encode; those requests get a 422 that names the field, checked one
by one in test_api.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

pytestmark = pytest.mark.sampler

EXAMPLES = int(os.environ.get("SAMPLER_FUZZ_EXAMPLES", "100"))
#: Where the benchmark wants one JSON line per request (operation, status); unset in the tests.
REPORT = os.environ.get("SAMPLER_FUZZ_REPORT")
STATUSES: Counter[tuple[str, int]] = Counter()
#: 504s for a deadline the request itself set too short (see ``own_deadline``), apart.
EXPIRED: Counter[str] = Counter()
#: A deadline the client set (``timeout_s``) shorter than this may expire in the queue: the 504
#: it gets is the documented answer to its own request, not a server error.
SHORT_DEADLINE_S = 1.0


def own_deadline(case) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    deadline = body.get("timeout_s")
    return isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and deadline <= SHORT_DEADLINE_S


#: (operation, generation mode): the cases of the parametrized test below. The probes take no
#: input, so there is nothing to make schema-violating: only positive requests for them.
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
#: The edits endpoint is fuzzed on the image-to-image server (a text-to-image model refuses every
#: edit before reading it), the others on the text-to-image one.
OPERATIONS = [("fuzz", "GET", path, POSITIVE) for path in ("/healthz", "/readyz", "/metrics", "/v1/models")] + [
    (server, "POST", path, mode)
    for server, path in (("fuzz", "/v1/images/generations"), ("fuzz", "/v1/generate"),
                         ("img2img", "/v1/images/edits"), ("img2img", "/v1/generate"))
    for mode in (POSITIVE, NEGATIVE)
    # A multipart form has no types: every part is text, so a "negative" prompt (an array of
    # one string, a number) arrives as the same text as a valid one. Edits' refusals of bad
    # parts are checked by hand in test_api.py and test_edits.py.
    if not (path == "/v1/images/edits" and mode == NEGATIVE)]


@pytest.fixture(scope="module")
def schemas(sampler_servers):
    """Each fuzzed server's OpenAPI document, as that server serves it."""
    return {name: schemathesis.openapi.from_url(sampler_servers[name].url + "/openapi.json")
            for name in ("fuzz", "img2img")}


def test_the_document_lists_exactly_the_operations_fuzzed(schemas):
    listed = {(op.ok().method.upper(), op.ok().path) for op in schemas["fuzz"].get_all_operations()}
    assert listed == {(m, p) for _, m, p, _ in OPERATIONS}


@pytest.mark.parametrize("server, method, path, mode", OPERATIONS,
                         ids=[f"{s} {m} {p} {g.value}" for s, m, p, g in OPERATIONS])
def test_every_answer_is_documented_and_none_is_a_server_error(schemas, server, method, path, mode):
    operation = schemas[server][path][method]

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def fuzz(case):
        label = f"{server}: {operation.label}"
        response = case.call(timeout=120)
        status = response.status_code
        expired = status == 504 and own_deadline(case)
        if expired:
            EXPIRED[label] += 1
        else:
            STATUSES[(label, status)] += 1
        if REPORT:
            with open(REPORT, "a") as out:
                out.write(json.dumps({"operation": label, "mode": mode.value,
                                      "status": status, "own_deadline": expired}) + "\n")
        assert status < 500 or expired, \
            f"{status} {response.text[:300]} for {case.as_curl_command()[:600]}"
        case.validate_response(response, excluded_checks=[checks.positive_data_acceptance, not_a_server_error])

    fuzz()


@pytest.mark.parametrize("name", ["fuzz", "img2img"])
def test_the_servers_survived_the_fuzzing(sampler_servers, name):
    server = sampler_servers[name]
    assert server.proc.poll() is None, "the sampler process exited"
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    unhandled = [line for line in server.log().splitlines() if '"unhandled error"' in line]
    assert not unhandled, unhandled[:3]


def test_fuzzing_reached_both_success_and_refusal_and_no_server_error():
    codes = Counter()
    for (_label, code), n in STATUSES.items():
        codes[code] += n
    assert sum(codes.values()) >= 4 * EXAMPLES, codes  # seven POST operation-and-mode cases
    assert codes[200] > 0 and sum(n for c, n in codes.items() if 400 <= c < 500) > 0, codes
    assert not [c for c in codes if c >= 500], (codes, EXPIRED)
