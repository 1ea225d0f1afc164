"""The approximate top-k index (mahn.index): its recall against exact ranking. The Recommender serving
through it: tests/test_serve.py."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from mahn.cli import app
from mahn.errors import DataError
from mahn.index import AUTO_IVF_FROM, HNSWIndex, HNSWSettings, IVFIndex, IVFSettings, check_index, resolve_index


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


def test_ivf_finds_nearly_every_true_top_10_by_inner_product_whatever_the_norms():
    """The lifted IVF index (mahn.index.IVFIndex) over clustered items of very different norms, as trained item
    tables are: recall@10 against exact inner-product ranking, exact scores, best first. Fewer probes find fewer,
    and so does re-ranking fewer candidates: the 4-bit codes alone are rough. (Structureless Gaussian items need
    many more probes: benchmarks/ann_recall.py.)"""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 24)) * 2
    table = ((centres[rng.integers(40, size=12_000)] + rng.normal(size=(12_000, 24)))
             * rng.lognormal(0, 0.5, size=(12_000, 1))).astype(np.float32)
    queries = (centres[rng.integers(40, size=200)] + rng.normal(size=(200, 24))).astype(np.float32)
    exact = np.argsort(-(queries @ table.T), axis=1)[:, :10]

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, ids, strict=True)]))

    index = IVFIndex(table, IVFSettings(probes=32))
    assert index.lists == 307  # 4·sqrt(12,000) = 438 -> 512, capped at 12,000 // 39 = 307 items a list
    scores, ids = index.search(queries, 10)
    assert recall(ids) >= 0.98, recall(ids)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ table.T, ids, 1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    index.settings = IVFSettings(probes=2)
    assert recall(index.search(queries, 10)[1]) < 0.8
    index.settings = IVFSettings(probes=32, candidates=10)
    assert recall(index.search(queries, 10)[1]) < 0.8
    small = IVFIndex(table[:50], IVFSettings(lists=1))  # floats, not codes, below QUANTISE_FROM items
    scores, ids = small.search(queries[:2], 60)  # k above the items: all 50, best first
    assert ids.shape == (2, 50) and sorted(ids[0].tolist()) == list(range(50))
    np.testing.assert_allclose(scores[0], np.sort(table[:50] @ queries[0])[::-1], rtol=1e-5, atol=1e-5)


def test_auto_is_exact_for_small_catalogues_and_ivf_for_large_ones():
    assert resolve_index("auto", AUTO_IVF_FROM - 1) == "exact"
    assert resolve_index("auto", AUTO_IVF_FROM) == "ivf"
    assert resolve_index("hnsw", 10) == "hnsw" and resolve_index("exact", 10**7) == "exact"


def test_unknown_index_is_refused():
    with pytest.raises(DataError, match="unknown index 'annoy'"):
        check_index("annoy")
    result = CliRunner().invoke(app, ["serve", "no-such-run", "--index", "annoy"])
    # refused for the index, before the (missing) run is looked at
    assert result.exit_code != 0 and "unknown index 'annoy'" in str(result.exception), result.exception


def test_mahn_serve_passes_the_index_defaults_the_benchmark_measured(monkeypatch, tmp_path):
    """`mahn serve` without --probes/--ef-search serves with mahn.index's defaults, the ones
    benchmarks/ann_recall.py measured, and with --index auto."""
    import mahn.serve.process

    seen = {}
    monkeypatch.setattr(mahn.serve.process, "run_server", lambda run, **settings: seen.update(settings))
    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["index"] == "auto" and seen["probes"] == IVFSettings().probes == 1024
    assert seen["ef_search"] == HNSWSettings().ef_search
