"""`mahn serve` fuzzed from its own OpenAPI schema with Schemathesis, in process (the harness: tests/fuzz.py)."""

from __future__ import annotations

import orjson
import pytest

from fuzz import build_shop, fuzz, make_app

TEST_EXAMPLES = 30  # per operation and mode


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(build_shop(tmp_path_factory.mktemp("fuzz")))


def test_schemathesis_finds_no_server_error_and_no_schema_violation(app):
    report = fuzz(app, TEST_EXAMPLES, seed=0)
    assert len(report["operations"]) >= 8, report["operations"]  # every endpoint of the API is fuzzed
    assert {"POST /recommend", "POST /recommend/batch", "POST /items", "GET /items/{key}"} <= set(
        report["operations"])
    assert report["cases"] >= 8 * TEST_EXAMPLES, report["cases"]
    assert report["statuses"][200] >= 20, report["statuses"]  # generated keys reach the model, not only 400s
    assert not [s for s in report["statuses"] if s >= 500], report["statuses"]
    assert not report["failures"], orjson.dumps(report["failures"][:5], option=orjson.OPT_INDENT_2).decode()
