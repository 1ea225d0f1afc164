"""The approximate top-k index (mahn.index): its recall against exact ranking. The Recommender serving
through it: tests/test_serve.py."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from mahn.cli import app
from mahn.errors import DataError
from mahn.index import HNSWIndex, HNSWSettings, check_index


def test_hnsw_finds_nearly_every_true_top_10_by_inner_product():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(5000, 24)).astype(np.float32)
    queries = rng.normal(size=(200, 24)).astype(np.float32)
    exact = np.argsort(-(queries @ table.T), axis=1)[:, :10]
    scores, ids = HNSWIndex(table).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, ids, strict=True)])
    assert recall >= 0.95, recall
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ table.T, ids, 1), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # a graph that keeps too few candidates misses more: the recall is measured, not assumed
    _, poor = HNSWIndex(table, HNSWSettings(links=2, ef_construction=10, ef_search=10)).search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, poor, strict=True)]) < recall


def test_unknown_index_is_refused():
    with pytest.raises(DataError, match="unknown index 'ivf'"):
        check_index("ivf")
    result = CliRunner().invoke(app, ["serve", "no-such-run", "--index", "ivf"])
    # refused for the index, before the (missing) run is looked at
    assert result.exit_code != 0 and "unknown index 'ivf'" in str(result.exception), result.exception
