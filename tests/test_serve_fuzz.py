"""`mahn serve` fuzzed from its own OpenAPI schema with Schemathesis, in process (the harness: tests/fuzz.py)."""

from __future__ import annotations

import orjson
import pytest

from fuzz import build_shop, fuzz, make_app

TEST_EXAMPLES = 30  # per operation and mode


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    shop = build_shop(tmp_path_factory.mktemp("fuzz"))
    app = make_app(shop)
    app.state.shop = shop
    return app


def test_schemathesis_finds_no_server_error_and_no_schema_violation(app):
    report = fuzz(app, TEST_EXAMPLES, seed=0)
    assert len(report["operations"]) >= 8, report["operations"]  # every endpoint of the API is fuzzed
    assert {"POST /recommend", "POST /recommend/batch", "POST /items", "GET /items/{key}"} <= set(
        report["operations"])
    assert report["cases"] >= 8 * TEST_EXAMPLES, report["cases"]
    assert report["statuses"][200] >= 20, report["statuses"]  # generated keys reach the model, not only 400s
    assert not [s for s in report["statuses"] if s >= 500], report["statuses"]
    assert not report["failures"], orjson.dumps(report["failures"][:5], option=orjson.OPT_INDENT_2).decode()


def test_schemathesis_with_a_token_guarding_every_operation(app):
    """`--protect all`: every operation but the health check takes the token; Schemathesis sends it, and its
    `ignored_auth` check tries each guarded operation without it and with a wrong one."""
    from mahn.serve.access import Access

    token = "fuzz-token-fuzz-token-fuzz"
    guarded = make_app(app.state.shop, Access(token, "all"))
    schema = guarded.openapi()
    assert all(op.get("security") == [{"token": []}] for path, ops in schema["paths"].items() if path != "/health"
               for op in ops.values())
    report = fuzz(guarded, TEST_EXAMPLES // 3, seed=1, token=token)
    assert report["statuses"][200] >= 20, report["statuses"]
    assert not [s for s in report["statuses"] if s >= 500], report["statuses"]
    assert not report["failures"], orjson.dumps(report["failures"][:5], option=orjson.OPT_INDENT_2).decode()
