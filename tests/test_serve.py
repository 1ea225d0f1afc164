"""`mahn serve`: the HTTP API over a trained run (FastAPI's TestClient), and the real server (uvicorn)."""

from __future__ import annotations

import os
import shutil

import httpx
import numpy as np
import orjson
import polars as pl
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import mahn
from mahn.catalog import add_item_records
from mahn.errors import DataError
from mahn.serve import create_app
from mahn.serve.limits import MAX_BODY
from mahn.settings import resolve
from mahn.training import train
from servers import free_port, mahn_serve, serving

CLUSTERS = 3
ITEMS = 30


def codes(cluster: int, rng, offset: int) -> str:
    """Four discrete codes whose first level names the cluster (the `codes` feature encoder's input)."""
    return orjson.dumps([offset + cluster, *rng.integers(0, 256, 3).tolist()]).decode()


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """A small shop: users walk through one cluster of items; images (some) and codes that reveal the cluster,
    encoded by the `codes` encoders (so new items can be added); a MAHN run and an ID-only SASRec run."""
    from mahn.data.prepare import PrepareConfig, prepare_frames
    from mahn.features import FeatureConfig, extract_features

    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i in range(0, ITEMS, 2):  # every second item has a local image
        Image.new("RGB", (8, 8), (80 * (i % CLUSTERS), 40, 200)).save(images / f"i{i:03d}.png")
    Image.new("RGB", (8, 8)).save(root / "outside.png")  # an image outside the images folder
    os.symlink("/etc/hostname", images / "link.png")  # a link that leads out of it
    image = [str(images / f"i{i:03d}.png") if i % 2 == 0 else None for i in range(ITEMS)]
    image[1], image[3], image[5] = str(root / "outside.png"), str(images / "link.png"), "https://example.com/5.png"
    rows = []
    for u in range(40):
        members = [i for i in range(ITEMS) if i % CLUSTERS == u % CLUSTERS]
        start = int(rng.integers(len(members)))
        rows += [(f"u{u:03d}", f"i{members[(start + p) % len(members)]:03d}", p) for p in range(8)]
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64}, orient="row")
    items = pl.DataFrame({"item": [f"i{i:03d}" for i in range(ITEMS)],
                          "title": [f"Item {i} of cluster {i % CLUSTERS}" for i in range(ITEMS)],
                          "image": image,
                          "image_codes": [codes(i % CLUSTERS, rng, 0) for i in range(ITEMS)],
                          "text_codes": [codes(i % CLUSTERS, rng, 10) for i in range(ITEMS)]})
    prepare_frames(frame, items, root / "data", PrepareConfig(num_negatives=10, seed=0))
    extract_features(root / "data", FeatureConfig(image="codes", text="codes", progress=False, workers=1))
    runs = {}
    for name, values in (("mahn", {"model": "mahn", "dim": 8, "epochs": 3}),
                         ("sasrec", {"model": "sasrec", "dim": 8, "epochs": 1})):
        runs[name] = root / "runs" / name
        train(root / "data", runs[name], resolve(("test", {**values, "batch_size": 32, "max_len": 6, "seed": 0,
                                                           "progress": False, "threads": 1})))
    return {"root": root, "images": images, "runs": runs}


@pytest.fixture(scope="module")
def client(shop) -> TestClient:
    app = create_app(shop["runs"]["mahn"], device="cpu", compare=shop["runs"]["sasrec"], images_root=shop["images"])
    return TestClient(app)


KEYS = [f"i{i:03d}" for i in range(ITEMS)]


def test_recommend_answers_what_the_python_api_answers(shop, client):
    recommender = mahn.load(shop["runs"]["mahn"], device="cpu")
    for history, k in (([KEYS[0], KEYS[3]], 5), ([KEYS[4]], 1), (KEYS[:20], 10)):
        response = client.post("/recommend", json={"history": history, "k": k})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = recommender.recommend(history, k)
        assert body["run"] == "main"
        assert [(r["key"], r["title"]) for r in body["items"]] == [(r.key, r.title) for r in expected]
        assert [r["score"] for r in body["items"]] == pytest.approx([r.score for r in expected], rel=1e-5)
        assert not set(history) & {r["key"] for r in body["items"]}  # the history is excluded by default
    kept = client.post("/recommend", json={"history": [KEYS[0]], "k": ITEMS, "exclude_history": False}).json()
    assert len(kept["items"]) == ITEMS and KEYS[0] in {r["key"] for r in kept["items"]}
    # image URLs: local images inside the root are served here; remote ones are their own URL; the rest none
    urls = {r["key"]: r["image_url"] for r in kept["items"]}
    assert urls[KEYS[0]] == f"/images/{KEYS[0]}" and urls[KEYS[5]] == "https://example.com/5.png"
    assert urls[KEYS[1]] is None and urls[KEYS[3]] is None and urls[KEYS[7]] is None


def test_candidates_rank_only_those(shop, client):
    pool = [KEYS[2], KEYS[5], KEYS[8], KEYS[9], KEYS[0]]
    body = client.post("/recommend", json={"history": [KEYS[0]], "k": 10, "candidates": pool}).json()
    keys = [r["key"] for r in body["items"]]
    assert sorted(keys) == sorted(pool[:-1])  # the history item is left out of the candidates too
    full = {r.key: r.score for r in mahn.load(shop["runs"]["mahn"], device="cpu").recommend([KEYS[0]], ITEMS - 1)}
    assert keys == sorted(pool[:-1], key=lambda k: -full[k])
    assert [r["score"] for r in body["items"]] == pytest.approx([full[k] for k in keys], rel=1e-5)
    unknown = client.post("/recommend", json={"history": [KEYS[0]], "candidates": [KEYS[1], "nope"]})
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]


def test_batch_equals_single_calls(client):
    requests = [{"history": [KEYS[0], KEYS[3], KEYS[6]], "k": 4}, {"history": [KEYS[1]], "k": 2},
                {"history": KEYS[10:22], "k": 3, "exclude_history": False},
                {"history": [KEYS[2]], "k": 2, "candidates": [KEYS[5], KEYS[8], KEYS[11]]}]
    response = client.post("/recommend/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(requests)
    for request, result in zip(requests, results, strict=True):
        single = client.post("/recommend", json=request).json()
        assert [r["key"] for r in result["items"]] == [r["key"] for r in single["items"]]
        assert [r["score"] for r in result["items"]] == pytest.approx([r["score"] for r in single["items"]], rel=1e-5)
    too_many = client.post("/recommend/batch", json={"requests": [requests[0]] * 257})
    assert too_many.status_code == 422
    bad = client.post("/recommend/batch", json={"requests": [requests[0], {"history": ["nope"]}]})
    assert bad.status_code == 400 and "nope" in bad.json()["detail"]


def queued_together(batcher, recommender, bodies: list[dict]) -> list:
    """POST /recommend's bodies sent to `batcher` at once while the model is busy (its lock held for 0.3 s):
    the answers, an exception in place of each that failed."""
    import asyncio

    from mahn.serve.schemas import RecommendRequest

    async def all_at_once():
        recommender.lock.acquire()
        asyncio.get_running_loop().call_later(0.3, recommender.lock.release)
        return await asyncio.gather(*(batcher.recommend(RecommendRequest(**b)) for b in bodies),
                                    return_exceptions=True)

    return asyncio.run(all_at_once())


def test_requests_waiting_together_are_scored_in_one_call_and_fail_alone(shop):
    """The batcher behind POST /recommend: while the model is busy, requests queue and the next call scores them
    together; each gets what it would get alone, and a bad one fails alone with its own error."""
    from mahn.serve.batcher import Batcher

    recommender = mahn.load(shop["runs"]["mahn"], device="cpu")
    good = [{"history": [KEYS[i], KEYS[(3 * i + 1) % ITEMS]], "k": 1 + i % 7} for i in range(6)]
    good.append({"history": KEYS[:9], "k": 4, "candidates": KEYS[10:20], "exclude_history": False})
    bad = [{"history": [KEYS[2], "no-such-item"]}, {"history": [KEYS[2]], "k": ITEMS + 1}]

    def alone(body):
        return recommender.recommend(body["history"], body.get("k", 10), body.get("exclude_history", True),
                                     body.get("candidates"))

    batcher = Batcher(recommender)
    answers = queued_together(batcher, recommender, good)
    # the first request may find the thread idle and be scored alone; the rest wait for the model together
    assert batcher.answered == len(good) and batcher.batches <= 2
    for body, answer in zip(good, answers, strict=True):
        assert [r.key for r in answer] == [r.key for r in alone(body)]
        assert [r.score for r in answer] == pytest.approx([r.score for r in alone(body)], rel=1e-5)

    mixed = good[:3] + bad + good[3:]
    answers = queued_together(batcher, recommender, mixed)
    assert isinstance(answers[3], DataError) and "no-such-item" in str(answers[3])
    assert isinstance(answers[4], DataError) and "k must be between 1" in str(answers[4])
    for body, answer in zip(mixed, answers, strict=True):
        if body in good:
            assert [r.key for r in answer] == [r.key for r in alone(body)]

    import asyncio

    from mahn.serve.batcher import Pending
    from mahn.serve.schemas import RecommendRequest

    gone = asyncio.new_event_loop()  # a request whose event loop closed while it was scored: dropped, no error
    future = gone.create_future()
    gone.close()
    batcher._answer([Pending(RecommendRequest(**good[0]), future)])
    assert [[r.key for r in a] for a in queued_together(batcher, recommender, good[:2])] == [
        [r.key for r in alone(b)] for b in good[:2]]

    batcher.close()  # a swapped-out run: its thread stops, and requests that still reach it are answered
    batcher.thread.join(5)
    assert not batcher.thread.is_alive()
    assert [[r.key for r in a] for a in queued_together(batcher, recommender, good[:2])] == [
        [r.key for r in alone(b)] for b in good[:2]]


def test_bad_input_is_a_clear_4xx_never_a_500(client):
    unknown = client.post("/recommend", json={"history": [KEYS[0], "no-such-item", "other-missing"]})
    assert unknown.status_code == 400
    detail = unknown.json()["detail"]
    assert "no-such-item" in detail and "other-missing" in detail and "/" not in detail  # no server paths
    many = client.post("/recommend", json={"history": [f"x{i}" for i in range(12)]}).json()["detail"]
    assert "x0" in many and "x4" in many and "x5" not in many and "7 more" in many
    cases = [
        ({"history": []}, 422),  # empty history
        ({"history": [KEYS[0]], "k": 0}, 422),
        ({"history": [KEYS[0]], "k": 1001}, 422),
        ({"history": [KEYS[0]], "k": ITEMS + 1}, 400),  # more than the number of items
        ({"history": KEYS[0]}, 422),  # wrong types
        ({"history": [1, 2]}, 422),
        ({"history": [KEYS[0]], "k": "5"}, 422),
        ({"history": [KEYS[0]], "k": 2.5}, 422),
        ({"history": [KEYS[0]], "exclude_history": "no"}, 422),
        ({"history": [KEYS[0]], "hist": []}, 422),  # a misspelt field
        ({}, 422),
        ([KEYS[0]], 422),
    ]
    for body, status in cases:
        response = client.post("/recommend", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["detail"]
    # JSON Schema counts 5.0 as an integer: the API takes it as 5
    integral = client.post("/recommend", json={"history": [KEYS[0]], "k": 5.0})
    assert integral.status_code == 200 and len(integral.json()["items"]) == 5
    k_message = client.post("/recommend", json={"history": [KEYS[0]], "k": ITEMS + 1}).json()["detail"]
    assert f"between 1 and the number of items ({ITEMS})" in k_message
    for content, kind in ((b"not json", "application/json"), (b"history=i000", "application/x-www-form-urlencoded"),
                          (b"\xff\xfe", "text/plain"), (b"", "application/json")):
        response = client.post("/recommend", content=content, headers={"content-type": kind})
        assert 400 <= response.status_code < 500, (content, response.text)
    assert client.get("/recommend").status_code == 405
    assert client.post("/recommend?run=other", json={"history": [KEYS[0]]}).status_code == 422


def test_python_api_errors(shop):
    recommender = mahn.load(shop["runs"]["mahn"], device="cpu")
    with pytest.raises(DataError, match="empty"):
        recommender.recommend([])
    for k in (0, ITEMS + 1):
        with pytest.raises(DataError, match="k must be"):
            recommender.recommend([KEYS[0]], k)
    with pytest.raises(DataError, match="a, b"):
        recommender.recommend_batch([[KEYS[0]], ["a", "b", KEYS[1]]])
    assert recommender.recommend([KEYS[0]], 3, candidates=[]) == []


def test_oversized_bodies_are_refused_with_413(client):
    huge = orjson.dumps({"history": [KEYS[0]] * (MAX_BODY // 6)})
    assert len(huge) > MAX_BODY
    response = client.post("/recommend", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: refused once the streamed body passes the limit
        for _ in range(0, len(huge), 65536):
            yield b" " * 65536

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_items_lookup_and_search(client):
    item = client.get(f"/items/{KEYS[4]}")
    assert item.status_code == 200
    assert item.json() == {"key": KEYS[4], "title": "Item 4 of cluster 1", "image_url": f"/images/{KEYS[4]}",
                           "added": False}
    missing = client.get("/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]
    found = client.get("/items", params={"query": "CLUSTER 2", "limit": 4}).json()
    assert [i["key"] for i in found["items"]] == [KEYS[2], KEYS[5], KEYS[8], KEYS[11]]
    page = client.get("/items", params={"query": "cluster 2", "limit": 4, "offset": 4}).json()
    assert [i["key"] for i in page["items"]] == [KEYS[14], KEYS[17], KEYS[20], KEYS[23]]
    assert len(client.get("/items").json()["items"]) == 20
    assert client.get("/items", params={"query": "nothing like this"}).json()["items"] == []
    assert client.get("/items", params={"limit": 0}).status_code == 422
    assert client.get("/items", params={"limit": "many"}).status_code == 422


def test_images_are_served_only_from_inside_the_root(shop, client):
    image = client.get(f"/images/{KEYS[0]}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (shop["images"] / f"{KEYS[0]}.png").read_bytes()
    for key in (KEYS[1], KEYS[3], KEYS[5], KEYS[7]):  # outside the root, a link out of it, remote, none
        response = client.get(f"/images/{key}")
        assert response.status_code == 404 and key in response.json()["detail"], key
    for path in ("/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd", "/images/../../etc/passwd",
                 "/images/" + str(shop["root"] / "outside.png")):
        response = client.get(path)
        assert response.status_code in (400, 404), path
        assert b"root:" not in response.content and response.headers["content-type"] == "application/json"


def test_health_model_and_the_compared_run(shop, client):
    assert client.get("/health").json() == {"status": "ok", "items": ITEMS}
    info = client.get("/model").json()
    assert info["name"] == "mahn" and info["run"] == "main" and info["compare"] is True
    assert info["settings"]["model_config"]["dim"] == 8 and info["settings"]["train"]["max_len"] == 6
    assert info["dataset"] == str(shop["root"] / "data") and info["accepts_new_items"] is True
    assert set(info["valid"]) >= {"uni100", "full"} and info["test"] is None
    assert info["versions"]["mahn"] == mahn.__version__ and info["versions"]["torch"]
    other = client.get("/model", params={"run": "compare"}).json()
    assert other["name"] == "sasrec" and other["accepts_new_items"] is False
    body = {"history": [KEYS[0], KEYS[3]], "k": 3}
    compared = client.post("/recommend?run=compare", json=body).json()
    expected = mahn.load(shop["runs"]["sasrec"], device="cpu").recommend(body["history"], 3)
    assert compared["run"] == "compare" and [r["key"] for r in compared["items"]] == [r.key for r in expected]
    single = TestClient(create_app(shop["runs"]["sasrec"], device="cpu"))
    refused = single.post("/recommend?run=compare", json=body)
    assert refused.status_code == 400 and "--compare" in refused.json()["detail"]


def test_openapi_lists_every_endpoint_with_typed_schemas(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {"/recommend", "/recommend/batch", "/items", "/items/upload", "/items/{key}", "/images/{key}",
                          "/health", "/model", "/users", "/users/{key}/history", "/admin/reload"}
    components = schema["components"]["schemas"]

    def ref(content: dict) -> str:
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert ref(paths["/recommend"]["post"]["requestBody"]["content"]) == "RecommendRequest"
    assert ref(paths["/recommend"]["post"]["responses"]["200"]["content"]) == "RecommendResponse"
    for code in ("400", "413", "422"):
        assert code in paths["/recommend"]["post"]["responses"]
    assert ref(paths["/recommend"]["post"]["responses"]["400"]["content"]) == "ErrorResponse"
    assert ref(paths["/items/{key}"]["get"]["responses"]["404"]["content"]) == "ErrorResponse"
    assert ref(paths["/items"]["post"]["requestBody"]["content"]) == "AddItemsRequest"
    assert ref(paths["/items"]["get"]["responses"]["200"]["content"]) == "SearchResponse"
    assert ref(paths["/health"]["get"]["responses"]["200"]["content"]) == "Health"
    assert ref(paths["/model"]["get"]["responses"]["200"]["content"]) == "ModelInfo"
    request = components["RecommendRequest"]
    assert request["required"] == ["history"] and request["additionalProperties"] is False
    assert request["properties"]["k"] == {**request["properties"]["k"], "type": "integer", "minimum": 1,
                                          "maximum": 1000, "default": 10}
    assert request["properties"]["history"]["items"]["type"] == "string"
    assert components["RecommendedItem"]["properties"]["score"]["type"] == "number"
    assert components["BatchRequest"]["properties"]["requests"]["maxItems"] == 256
    run = next(p for p in paths["/recommend"]["post"]["parameters"] if p["name"] == "run")
    assert run["in"] == "query" and run["schema"]["enum"] == ["main", "compare"]


def test_added_items_are_served_and_id_only_models_refuse_them(shop, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shop["runs"]["mahn"], run)
    client = TestClient(create_app(run, device="cpu", compare=shop["runs"]["sasrec"], images_root=shop["images"]))
    Image.new("RGB", (8, 8), (0, 40, 200)).save(shop["images"] / "new-a.png")
    rng = np.random.default_rng(1)
    records = [{"key": "new-a", "title": "A new item of cluster 0", "image": "new-a.png"},
               {"key": "new-b", "title": "Another new item", "text": "made of wool"}]
    for record, cluster in zip(records, (0, 1), strict=True):
        record.update(image_codes=codes(cluster, rng, 0), text_codes=codes(cluster, rng, 10))
    for record in records:  # the API takes codes as lists of integers
        record.update(image_codes=orjson.loads(record["image_codes"]), text_codes=orjson.loads(record["text_codes"]))
    wrong = client.post("/items", json={"items": [{**records[0], "image_codes": [1, 2, 3]}]})
    assert wrong.status_code == 422
    assert client.post("/items", json={"items": [{**records[0], "colour": "red"}]}).status_code == 422
    response = client.post("/items", json={"items": records})
    assert response.status_code == 200, response.text
    assert response.json()["added"] == ["new-a", "new-b"] and response.json()["items"] == ITEMS + 2
    assert client.get("/health").json()["items"] == ITEMS + 2
    item = client.get("/items/new-a").json()
    assert item == {"key": "new-a", "title": "A new item of cluster 0", "image_url": "/images/new-a", "added": True}
    assert client.get("/images/new-a").content == (shop["images"] / "new-a.png").read_bytes()
    assert [i["key"] for i in client.get("/items", params={"query": "new item"}).json()["items"]] == ["new-a", "new-b"]
    body = {"history": [KEYS[0], KEYS[3]], "k": ITEMS + 2, "exclude_history": False}
    served = client.post("/recommend", json=body).json()["items"]
    assert {"new-a", "new-b"} <= {r["key"] for r in served}
    expected = mahn.load(run, device="cpu").recommend(body["history"], ITEMS + 2, exclude_history=False)
    assert [r["key"] for r in served] == [r.key for r in expected]
    only_new = client.post("/recommend", json={"history": [KEYS[0]], "candidates": ["new-a", "new-b"]}).json()
    assert sorted(r["key"] for r in only_new["items"]) == ["new-a", "new-b"]
    history_of_new = client.post("/recommend", json={"history": ["new-a"], "k": 5})  # read by its content
    assert history_of_new.status_code == 200, history_of_new.text
    recommended = [r["key"] for r in history_of_new.json()["items"]]
    assert len(recommended) == 5 and "new-a" not in recommended
    scores = {}
    for name, history in (("without", [KEYS[0]]), ("with", [KEYS[0], "new-a"])):
        served = client.post("/recommend", json={"history": history, "k": ITEMS + 2, "exclude_history": False})
        scores[name] = {r["key"]: r["score"] for r in served.json()["items"]}
    assert scores["with"] != scores["without"]  # the new item in the history changes what follows it
    again = client.post("/items", json={"items": records[:1]})
    assert again.status_code == 400 and "new-a" in again.json()["detail"]
    escape = client.post("/items", json={"items": [{"key": "x", "title": "x", "image": "../outside.png"}]})
    assert escape.status_code == 400 and "images folder" in escape.json()["detail"]
    nul = client.post("/items", json={"items": [{"key": "x", "title": "x", "image": "a\u0000.png"}]})
    assert nul.status_code == 400 and "NUL" in nul.json()["detail"]  # found by the fuzz: was a 500
    refused = client.post("/items?run=compare", json={"items": records})
    assert refused.status_code == 400 and "ranks items by their ID only" in refused.json()["detail"]
    # another process (`mahn add-items`, another worker) adds an item: the next request sees it
    from mahn.catalog import add_item_records

    add_item_records(run, [{"key": "new-c", "title": "Third"}], None)
    assert client.get("/health").json()["items"] == ITEMS + 3
    assert client.get("/items/new-c").json()["added"] is True


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_the_recommender_through_an_index_answers_as_exact_ranking(shop, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(shop["runs"]["mahn"], run)
    exact, approximate = mahn.load(run, device="cpu"), mahn.load(run, device="cpu", index=kind)
    assert exact.index_kind == "exact" and approximate.index_kind == kind  # auto: a small catalogue is exact
    histories = [KEYS[i : i + 4 : 3] for i in range(0, 24, 2)]  # two items a history, from one or two clusters
    for history in histories:
        for exclude in (True, False):
            want = exact.recommend(history, 10, exclude_history=exclude)
            got = approximate.recommend(history, 10, exclude_history=exclude)
            assert [r.key for r in got] == [r.key for r in want]
            np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-4, atol=1e-4)
    assert not set(histories[0]) & {r.key for r in approximate.recommend(histories[0], 10)}
    pool = KEYS[:7]
    assert [r.key for r in approximate.recommend(histories[0], 3, candidates=pool)] == [
        r.key for r in exact.recommend(histories[0], 3, candidates=pool)]
    # items added after training are scored exactly beside the index, which is not rebuilt
    built = approximate.ann()
    rng = np.random.default_rng(3)
    add_item_records(run, [{"key": f"new{c}", "title": f"New of cluster {c}",
                            "image_codes": codes(c, rng, 0), "text_codes": codes(c, rng, 10)} for c in range(3)])
    for recommender in (exact, approximate):
        recommender.refresh()
    for history in histories[:4]:
        want = exact.recommend(history, ITEMS + 3 - len(history))
        got = approximate.recommend(history, ITEMS + 3 - len(history))
        assert [r.key for r in got] == [r.key for r in want] and {"new0", "new1", "new2"} <= {r.key for r in got}
    assert approximate.ann() is built
    app = create_app(run, device="cpu", index=kind, ef_search=512, probes=3)
    settings = app.state.engines["main"].recommender.ann().settings
    assert (settings.probes if kind == "ivf" else settings.ef_search) == (3 if kind == "ivf" else 512)
    served = TestClient(app).post("/recommend", json={"history": KEYS[:2]})
    assert [r["key"] for r in served.json()["items"]] == [r.key for r in exact.recommend(KEYS[:2], 10)]


def test_concurrent_requests_get_the_answers_of_sequential_ones(shop):
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(shop["runs"]["mahn"], device="cpu")
    recommender = app.state.engines["main"].recommender
    rng = np.random.default_rng(2)
    bodies = [{"history": [KEYS[i] for i in rng.choice(ITEMS, int(rng.integers(1, 8)), replace=False)],
               "k": int(rng.integers(1, 10))} for _ in range(48)]
    with TestClient(app) as client:
        expected = [client.post("/recommend", json=b).json() for b in bodies]
        stop = False

        def refresh_all_along():  # a refresh swaps the items while requests read them
            count = 0
            while not stop:
                recommender.refresh()
                count += 1
            return count

        with ThreadPoolExecutor(8) as pool:
            refreshing = pool.submit(refresh_all_along)
            answers = list(pool.map(lambda b: client.post("/recommend", json=b).json(), bodies))
            batched = pool.submit(lambda: client.post("/recommend/batch", json={"requests": bodies[:20]}).json())
            batch = batched.result()
            stop = True
            assert refreshing.result() > 0
    # concurrent requests are scored together (mahn.serve.batcher): the same items, scores to float rounding
    approx = [[{**item, "score": pytest.approx(item["score"], rel=1e-5)} for item in e["items"]] for e in expected]
    assert [a["items"] for a in answers] == approx
    assert [r["items"] for r in batch["results"]] == approx[:20]
    assert app.state.engines["main"].batcher.answered == 2 * len(bodies)


def test_cli_serve_refuses_bad_settings(shop, tmp_path):
    from typer.testing import CliRunner

    from mahn.cli import app

    result = CliRunner().invoke(app, ["serve", str(shop["runs"]["mahn"]), "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-run")])
    assert isinstance(result.exception, DataError) and "config.json" in str(result.exception)
    result = CliRunner().invoke(app, ["serve", str(shop["runs"]["mahn"]), "--images-root", str(tmp_path / "none")])
    assert isinstance(result.exception, DataError) and "images folder" in str(result.exception)


def test_mahn_serve_runs_uvicorn(shop):
    run = str(shop["runs"]["mahn"])
    with serving(lambda port: mahn_serve(run, "--port", str(port), "--device", "cpu")) as served:
        body = {"history": [KEYS[0], KEYS[3]], "k": 3}
        answer = httpx.post(f"{served.url}/recommend", json=body, timeout=30).json()
        expected = mahn.load(shop["runs"]["mahn"], device="cpu").recommend(body["history"], 3)
        assert [r["key"] for r in answer["items"]] == [r.key for r in expected]
    server = served.process
    assert server.returncode is not None


def test_mahn_serve_workers_answer_through_a_tcp_socket_with_nodelay(shop, monkeypatch):
    """`--workers N` shares one listening socket created with protocol TCP, so asyncio sets TCP_NODELAY on each
    connection (uvicorn's own socket has protocol 0: each keep-alive response would wait ~40 ms for an ACK)."""
    import socket

    import uvicorn.supervisors

    from mahn.serve.process import run_workers

    handed = {}

    class Capture:
        def __init__(self, config, sockets):
            handed["sockets"], handed["workers"] = sockets, config.workers

        def run(self):
            pass

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Capture)
    run_workers("127.0.0.1", free_port(), 2)
    (listening,) = handed["sockets"]
    assert handed["workers"] == 2 and listening.proto == socket.IPPROTO_TCP and listening.get_inheritable()
    listening.close()

    run = str(shop["runs"]["mahn"])
    with serving(lambda port: mahn_serve(run, "--port", str(port), "--device", "cpu", "--workers", "2")) as served:
        body = {"history": [KEYS[1], KEYS[4]], "k": 3}
        expected = [r.key for r in mahn.load(shop["runs"]["mahn"], device="cpu").recommend(body["history"], 3)]
        with httpx.Client(timeout=30) as client:  # one keep-alive connection, several requests
            for _ in range(3):
                assert [r["key"] for r in client.post(f"{served.url}/recommend", json=body).json()["items"]] == expected


def test_new_item_places_rule():
    """mahn.scoring.with_new_items: the new items listed count toward the places; the best new items not listed
    replace the lowest-scored items that are not new; the list keeps its length and its order by score."""
    from mahn.scoring import with_new_items

    top = [(9.0, 0), (8.0, 1), (7.0, 2), (6.0, 3)]
    best_new = [(7.0, 2), (5.0, 10), (4.0, 11)]
    is_new = {2, 10, 11}.__contains__
    assert with_new_items(top, best_new, 0, is_new) == top
    assert with_new_items(top, best_new, 1, is_new) == top  # item 2 is new and listed already
    assert with_new_items(top, best_new, 2, is_new) == [(9.0, 0), (8.0, 1), (7.0, 2), (5.0, 10)]
    assert with_new_items(top, best_new, 3, is_new) == [(9.0, 0), (7.0, 2), (5.0, 10), (4.0, 11)]
    assert with_new_items(top, best_new, 4, is_new) == [(9.0, 0), (7.0, 2), (5.0, 10), (4.0, 11)]  # no more new
    assert with_new_items(top, [], 2, is_new) == top
    assert with_new_items([(7.0, 2)], best_new, 3, is_new) == [(7.0, 2)]  # nothing that is not new to replace


def with_three_new_items(shop, tmp_path, kind: str, seed: int):
    """A copy of the shop's MAHN run with three items added after training, one per cluster: the recommender and
    an HTTP client over it (`kind` index), and the new keys."""
    run = tmp_path / "run"
    shutil.copytree(shop["runs"]["mahn"], run)
    rng = np.random.default_rng(seed)
    new = [f"new{c}" for c in range(3)]
    add_item_records(run, [{"key": key, "title": f"New of cluster {c}", "image_codes": codes(c, rng, 0),
                            "text_codes": codes(c, rng, 10)} for c, key in enumerate(new)])
    return mahn.load(run, device="cpu", index=kind), TestClient(create_app(run, device="cpu", index=kind)), new


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_new_item_places_give_the_last_places_to_the_best_added_items(shop, tmp_path, kind):
    recommender, client, new = with_three_new_items(shop, tmp_path, kind, seed=4)
    changed = 0
    for history in (KEYS[0:2], KEYS[4:9:4], KEYS[7:8]):
        plain = [r.key for r in recommender.recommend(history, 5)]
        best_new = [r.key for r in recommender.recommend(history, 3, candidates=new)]
        for places in (1, 2, 3):
            placed = [r.key for r in recommender.recommend(history, 5, new_item_places=places)]
            listed_new = [key for key in plain if key in new]
            extra = [key for key in best_new if key not in plain][: max(0, places - len(listed_new))]
            kept = [key for key in plain if key not in new]
            kept = kept[: len(kept) - len(extra)]
            assert placed == sorted(kept + listed_new, key=plain.index) + extra, (history, places)
            assert len(placed) == 5 and sum(key in new for key in placed) >= places
            changed += placed != plain
            body = {"history": history, "k": 5, "new_item_places": places}
            assert [r["key"] for r in client.post("/recommend", json=body).json()["items"]] == placed
    assert changed >= 6  # the model's own top 5 rarely lists a new item: the places are what bring them in
    with pytest.raises(DataError, match="new_item_places must be between 0 and k"):
        recommender.recommend(KEYS[:2], 2, new_item_places=3)
    too_many = client.post("/recommend", json={"history": KEYS[:2], "k": 2, "new_item_places": 3})
    assert too_many.status_code == 400 and "new_item_places" in too_many.json()["detail"]
    assert client.post("/recommend", json={"history": KEYS[:2], "new_item_places": -1}).status_code == 422
    batch = client.post("/recommend/batch", json={"requests": [{"history": KEYS[:2], "k": 5, "new_item_places": 2},
                                                               {"history": KEYS[:2], "k": 5}]}).json()["results"]
    assert [r["key"] for r in batch[0]["items"]] == [r.key for r in recommender.recommend(KEYS[:2], 5,
                                                                                           new_item_places=2)]
    assert [r["key"] for r in batch[1]["items"]] == [r.key for r in recommender.recommend(KEYS[:2], 5)]


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_new_item_boost_raises_every_added_item_by_the_same_amount(shop, tmp_path, kind):
    recommender, client, new = with_three_new_items(shop, tmp_path, kind, seed=5)
    total = len(recommender.items.current().keys)
    entered = 0
    for history in (KEYS[0:2], KEYS[4:9:4], KEYS[7:8]):
        every = {r.key: r.score for r in recommender.recommend(history, total - len(set(history)))}
        plain = [r.key for r in recommender.recommend(history, 5)]
        gap = every[plain[-1]] - max(every[key] for key in new)  # how far the best new item is from the top 5
        if gap <= 0:  # a new item in the model's own top 5 already
            continue
        for boost in (0.5 * gap, 1.01 * gap, gap + 1.0):
            boosted = {key: score + boost * (key in new) for key, score in every.items()}
            expected = sorted(boosted, key=boosted.get, reverse=True)[:5]
            got = recommender.recommend(history, 5, new_item_boost=boost)
            assert [r.key for r in got] == expected, (history, boost)
            assert [r.score for r in got] == pytest.approx([boosted[key] for key in expected], abs=1e-4)
            entered += any(key in new for key in expected) and not any(key in new for key in plain)
            body = {"history": history, "k": 5, "new_item_boost": boost}
            assert [r["key"] for r in client.post("/recommend", json=body).json()["items"]] == expected
        assert [r.key for r in recommender.recommend(history, 5, new_item_boost=0.5 * gap)] == plain
    assert entered >= 3  # a boost just past the gap brings the best new item in, a smaller one does not
    for bad in (-1.0, float("nan"), 21.0):
        with pytest.raises(DataError, match="new_item_boost must be between 0 and 20"):
            recommender.recommend(KEYS[:2], 5, new_item_boost=bad)
    for bad in (-1, 21, "1"):
        assert client.post("/recommend", json={"history": KEYS[:2], "new_item_boost": bad}).status_code == 422
    batch = client.post("/recommend/batch", json={"requests": [{"history": KEYS[:2], "k": 5, "new_item_boost": 20},
                                                               {"history": KEYS[:2], "k": 5}]}).json()["results"]
    assert [r["key"] for r in batch[0]["items"]][:3] == [r.key for r in recommender.recommend(KEYS[:2], 3,
                                                                                              candidates=new)]
    assert [r["key"] for r in batch[1]["items"]] == [r.key for r in recommender.recommend(KEYS[:2], 5)]
