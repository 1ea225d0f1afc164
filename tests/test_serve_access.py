"""`mahn serve` left running: tokens on writes (and reads), read-only, swapping the model without dropping a
request (HTTP and SIGHUP), carrying added items over, and draining requests in flight on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import mahn
import test_serve
from mahn.errors import DataError
from mahn.serve import create_app
from mahn.serve.access import Access, check_exposure, is_loopback, read_token
from mahn.settings import resolve
from mahn.training import train
from servers import mahn_serve, serving
from test_serve import KEYS

shop = test_serve.shop  # the 30-item shop with a MAHN and a SASRec run, built once for this module
TOKEN = "a-token-of-sufficient-length-0123"
NEW = {"key": "new1", "title": "A new item", "image_codes": [0, 1, 2, 3], "text_codes": [10, 4, 5, 6]}


def fresh(shop, name: str, tmp_path):
    """A copy of one of the shop's runs (writes go into it)."""
    run = tmp_path / name
    shutil.copytree(shop["runs"][name], run)
    return run


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_writes_need_the_token_and_a_refused_write_leaves_nothing(shop, tmp_path):
    run = fresh(shop, "mahn", tmp_path)
    client = TestClient(create_app(run, device="cpu", images_root=shop["images"], access=Access(TOKEN)))
    missing = client.post("/items", json={"items": [NEW]})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/items", json={"items": [NEW]}, headers=bearer(TOKEN[:-1] + "4")).status_code == 403
    assert client.post("/items", json={"items": [NEW]}, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    upload = client.post("/items/upload", data={"key": "new2"}, files={"image": ("a.png", png(), "image/png")})
    assert upload.status_code == 401
    assert client.post("/admin/reload", json={}).status_code == 401
    assert not (run / "added").exists() and not (run / "uploads").exists()
    assert client.get("/items/new1").status_code == 404
    # reads stay open under the default `--protect writes`
    assert client.post("/recommend", json={"history": [KEYS[0]], "k": 3}).status_code == 200
    accepted = client.post("/items", json={"items": [NEW]}, headers=bearer(TOKEN))
    assert accepted.status_code == 200, accepted.text
    assert (run / "added" / "items.jsonl").exists() and client.get("/items/new1").json()["added"] is True

    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["token"][
            "description"]}
    assert schema["paths"]["/items"]["post"]["security"] == [{"token": []}]
    assert {"401", "403"} <= set(schema["paths"]["/items"]["post"]["responses"])
    assert "security" not in schema["paths"]["/recommend"]["post"]


def test_protect_all_guards_reads_but_not_the_page_or_the_health_check(shop):
    client = TestClient(create_app(shop["runs"]["mahn"], device="cpu", access=Access(TOKEN, "all")))
    body = {"history": [KEYS[0]], "k": 3}
    assert client.post("/recommend", json=body).status_code == 401
    assert client.get("/model", headers=bearer("wrong-token-wrong-token")).status_code == 403
    assert client.post("/recommend", json=body, headers=bearer(TOKEN)).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/recommend"]["post"]["security"] == [{"token": []}]


def test_read_only_refuses_every_write(shop, tmp_path):
    run = fresh(shop, "mahn", tmp_path)
    client = TestClient(create_app(run, device="cpu", access=Access(TOKEN, read_only=True)))
    refused = client.post("/items", json={"items": [NEW]}, headers=bearer(TOKEN))
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    assert client.post("/admin/reload", json={}, headers=bearer(TOKEN)).status_code == 403
    assert not (run / "added").exists()
    assert client.post("/recommend", json={"history": [KEYS[0]], "k": 3}).status_code == 200


def test_tokens_come_from_a_file_or_the_environment_and_must_be_long(tmp_path, monkeypatch):
    monkeypatch.delenv("MAHN_SERVE_TOKEN", raising=False)
    assert read_token(None) is None
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "token") == TOKEN
    monkeypatch.setenv("MAHN_SERVE_TOKEN", "  " + TOKEN + " ")
    assert read_token(None) == TOKEN
    (tmp_path / "short").write_text("secret")
    with pytest.raises(DataError, match="at least 16"):
        read_token(tmp_path / "short")
    with pytest.raises(DataError, match="cannot read"):
        read_token(tmp_path / "none")
    with pytest.raises(DataError, match="needs a token"):
        Access(None, "all")


def test_a_public_address_needs_a_token_or_read_only(shop):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.7")
    check_exposure("127.0.0.1", Access())
    check_exposure("0.0.0.0", Access(TOKEN))
    check_exposure("0.0.0.0", Access(read_only=True))
    env = {k: v for k, v in os.environ.items() if k != "MAHN_SERVE_TOKEN"}
    result = subprocess.run(mahn_serve(str(shop["runs"]["mahn"]), "--host", "0.0.0.0", "--port", "1"),
                            capture_output=True, text=True, env=env, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--read-only" in lines[0] and "token" in lines[0]


def png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def second(shop):
    """Another MAHN run on the shop's data (seed 1): different weights, the same features."""
    run = shop["root"] / "runs" / "mahn-seed1"
    train(shop["root"] / "data", run, resolve(("test", {"model": "mahn", "dim": 8, "epochs": 2, "batch_size": 32,
                                                        "max_len": 6, "seed": 1, "progress": False, "threads": 1})))
    return run


def test_a_swap_serves_the_new_run_and_carries_the_added_items(shop, second, tmp_path):
    served, other = fresh(shop, "mahn", tmp_path), tmp_path / "other"
    shutil.copytree(second, other)
    client = TestClient(create_app(served, device="cpu", images_root=shop["images"], access=Access(TOKEN)))
    before = client.get("/model").json()
    assert client.post("/items", json={"items": [NEW]}, headers=bearer(TOKEN)).status_code == 200
    uploaded = client.post("/items/upload", data={"key": "new2", "title": "Uploaded"}, headers=bearer(TOKEN),
                           files={"image": ("a.png", png(), "image/png")})
    assert uploaded.status_code == 200, uploaded.text

    swapped = client.post("/admin/reload", json={"run": str(other)}, headers=bearer(TOKEN))
    assert swapped.status_code == 200, swapped.text
    outcome = swapped.json()
    assert outcome["carried"] == 2 and outcome["previous_version"] == before["version"] != outcome["version"]
    after = client.get("/model").json()
    assert after["version"] == outcome["version"] and after["path"] == str(other) and after["swaps"] == 1
    assert after["added_items"] == 2
    # the new run answers as the new run does on its own, added items included
    expected = mahn.load(other, device="cpu").recommend([KEYS[0], "new1"], 5)
    answer = client.post("/recommend", json={"history": [KEYS[0], "new1"], "k": 5}).json()
    assert [r["key"] for r in answer["items"]] == [r.key for r in expected]
    assert client.get("/images/new2").content == png()  # the uploaded image moved with its item
    # the old run keeps its items; a later add goes to the new run only
    assert len((served / "added" / "items.jsonl").read_bytes().splitlines()) == 2
    third = {**NEW, "key": "new3"}
    assert client.post("/items", json={"items": [third]}, headers=bearer(TOKEN)).status_code == 200
    assert b"new3" in (other / "added" / "items.jsonl").read_bytes()
    assert b"new3" not in (served / "added" / "items.jsonl").read_bytes()
    # swapping back: the old run already has new1 and new2, and gets new3
    back = client.post("/admin/reload", json={"run": str(served)}, headers=bearer(TOKEN)).json()
    assert back["carried"] == 1 and back["skipped"] == ["new1", "new2"] and back["version"] == before["version"]


def test_a_run_that_does_not_load_leaves_the_old_one_serving(shop, tmp_path):
    served = fresh(shop, "mahn", tmp_path)
    client = TestClient(create_app(served, device="cpu"))
    version = client.get("/model").json()["version"]
    broken = fresh(shop, "sasrec", tmp_path)
    (broken / "best.safetensors").write_bytes(b"not a safetensors file")
    for body, says in (({"run": str(broken)}, "does not load"), ({"run": str(tmp_path / "nothing")}, "config.json")):
        refused = client.post("/admin/reload", json=body)
        assert refused.status_code == 400 and says in refused.json()["detail"], refused.text
        assert client.get("/model").json()["version"] == version
        assert client.post("/recommend", json={"history": [KEYS[0]], "k": 3}).status_code == 200


def test_a_model_that_cannot_serve_the_added_items_is_refused_unless_asked(shop, tmp_path):
    served, id_only = fresh(shop, "mahn", tmp_path), fresh(shop, "sasrec", tmp_path)
    client = TestClient(create_app(served, device="cpu"))
    assert client.post("/items", json={"items": [NEW]}).status_code == 200
    refused = client.post("/admin/reload", json={"run": str(id_only)})
    assert refused.status_code == 409 and "drop_added" in refused.json()["detail"]
    assert client.get("/model").json()["name"] == "mahn" and client.get("/items/new1").status_code == 200
    forced = client.post("/admin/reload", json={"run": str(id_only), "drop_added": True})
    assert forced.status_code == 200 and forced.json()["carried"] == 0
    assert client.get("/model").json()["name"] == "sasrec" and client.get("/items/new1").status_code == 404
    assert b"new1" in (served / "added" / "items.jsonl").read_bytes()  # not lost: still in the old run


def hammer(url: str, stop: threading.Event, outcomes: list, retried: list | None = None) -> None:
    """POST /recommend over one keep-alive connection until `stop`; every status (or error) into `outcomes`.
    With `retried`: a request whose kept-alive connection the server closed (a worker that is being replaced
    closes its idle connections) is sent once more on a new connection, as HTTP clients do, and counted there."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for attempt in (0, 1):
                try:
                    answer = client.post(f"{url}/recommend", json={"history": [KEYS[0], KEYS[3]], "k": 5})
                    outcomes.append(answer.status_code)
                except (httpx.ReadError, httpx.RemoteProtocolError) as error:
                    if retried is not None and attempt == 0:
                        retried.append(repr(error))
                        continue
                    outcomes.append(repr(error))
                except httpx.HTTPError as error:
                    outcomes.append(repr(error))
                break


def test_swaps_under_load_lose_no_request_and_sighup_reloads(shop, second, tmp_path):
    """The real server: four clients send requests without pause while the model is swapped over HTTP (to
    another run and back) and by SIGHUP (a link repointed to another run)."""
    link = tmp_path / "current"
    os.symlink(shop["runs"]["mahn"], link)
    (tmp_path / "token").write_text(TOKEN)
    command = lambda port: mahn_serve(str(link), "--port", str(port), "--device", "cpu",  # noqa: E731
                                      "--token-file", str(tmp_path / "token"))
    versions = {"first": None}
    with serving(command) as server:
        stop, outcomes = threading.Event(), []
        clients = [threading.Thread(target=hammer, args=(server.url, stop, outcomes)) for _ in range(4)]
        for client in clients:
            client.start()
        try:
            time.sleep(0.5)
            versions["first"] = httpx.get(f"{server.url}/model").json()["version"]
            to_second = httpx.post(f"{server.url}/admin/reload", json={"run": str(second)}, headers=bearer(TOKEN),
                                   timeout=60)
            assert to_second.status_code == 200, to_second.text
            time.sleep(0.3)
            back = httpx.post(f"{server.url}/admin/reload", json={}, headers=bearer(TOKEN), timeout=60)
            assert back.json()["run"] == str(second)  # null: the served run's path again
            os.remove(link)
            os.symlink(second, link)  # the served path now leads to the second run ...
            httpx.post(f"{server.url}/admin/reload", json={"run": str(link)}, headers=bearer(TOKEN), timeout=60)
            os.remove(link)
            os.symlink(shop["runs"]["mahn"], link)  # ... and back: SIGHUP reads it anew
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while httpx.get(f"{server.url}/model").json()["version"] != versions["first"]:
                assert time.monotonic() < deadline, "SIGHUP did not swap the run in"
                time.sleep(0.2)
            time.sleep(0.3)
        finally:
            stop.set()
            for client in clients:
                client.join()
        model = httpx.get(f"{server.url}/model").json()
    assert model["swaps"] == 4 and model["version"] == versions["first"]
    assert len(outcomes) > 50 and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]


def test_sigterm_lets_a_request_in_flight_finish(shop):
    """A request whose body is still arriving when SIGTERM comes is answered; then the server stops."""
    with serving(lambda port: mahn_serve(str(shop["runs"]["mahn"]), "--port", str(port), "--device", "cpu")) as server:
        body = orjson.dumps({"history": [KEYS[0], KEYS[3]], "k": 3})
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
            time.sleep(0.5)  # the server is reading the body
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert server.process.poll() is None  # waiting for the request in flight
            connection.sendall(body[5:])
            response = b""
            while chunk := connection.recv(65536):  # shutting down, the server closes the connection after it
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1])["items"]
        # then it ends as uvicorn ends a drained server: by the signal it received, re-raised (exit status 143)
        assert server.process.wait(timeout=30) == -signal.SIGTERM


def test_many_workers_refuse_a_swap_over_http_and_say_to_send_sighup(shop, tmp_path):
    env = {**os.environ, "MAHN_SERVE_TOKEN": TOKEN}
    run = str(shop["runs"]["mahn"])
    log = tmp_path / "server.log"
    with serving(lambda port: mahn_serve(run, "--port", str(port), "--device", "cpu", "--workers", "2"),
                 env=env, log=log) as server:
        refused = httpx.post(f"{server.url}/admin/reload", json={}, headers=bearer(TOKEN), timeout=60)
        assert refused.status_code == 409 and "SIGHUP" in refused.json()["detail"]
        assert httpx.post(f"{server.url}/items", json={"items": [NEW]}).status_code == 401  # workers got the token
        # SIGHUP replaces the workers one by one, each new one serving before the old one stops; an old worker
        # closes its idle keep-alive connections, so a request sent on one at that moment is sent again
        server.process.send_signal(signal.SIGHUP)
        stop, outcomes, retried = threading.Event(), [], []
        client = threading.Thread(target=hammer, args=(server.url, stop, outcomes, retried))
        client.start()
        deadline = time.monotonic() + 120
        while log.read_text().count("Terminated child process") < 2:  # both workers replaced
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(0.5)
        stop.set()
        client.join()
        assert len(outcomes) > 10 and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]
        assert len(retried) <= 2 * 2, retried  # at most the connections the two old workers closed


def test_items_carried_to_a_run_on_other_features_are_encoded_again(shop, tmp_path):
    """A run on another dataset (one item more, so other feature files): the added items are encoded again by
    its encoders from their stored fields, and it ranks them as if they had been added to it directly."""
    import polars as pl

    from mahn.catalog import add_item_records, carry_added
    from mahn.data.prepare import PrepareConfig, prepare_frames
    from mahn.features import FeatureConfig, extract_features
    from mahn.io import read_json

    data = shop["root"] / "data"
    items = pl.read_parquet(data / "items.parquet")
    users = pl.read_parquet(data / "users.parquet")
    log = (pl.read_parquet(data / "interactions.parquet").join(users, on="user").drop("user").rename({"key": "user"})
           .join(items.select("item", pl.col("key").alias("item_key")), on="item").drop("item")
           .rename({"item_key": "item"}).select("user", "item", "timestamp"))
    extra = items.tail(1).with_columns(pl.lit("i999").alias("key"), pl.lit("One more").alias("title"))
    log = pl.concat([log, pl.DataFrame({"user": ["u000"], "item": ["i999"], "timestamp": [99]},
                                       schema=log.schema)])
    frame = pl.concat([items, extra]).drop("item").rename({"key": "item"})
    prepare_frames(log, frame, tmp_path / "data2", PrepareConfig(num_negatives=10, seed=0))
    extract_features(tmp_path / "data2", FeatureConfig(image="codes", text="codes", progress=False, workers=1))
    other = tmp_path / "other"
    train(tmp_path / "data2", other, resolve(("test", {"model": "mahn", "dim": 8, "epochs": 1, "batch_size": 32,
                                                      "max_len": 6, "seed": 0, "progress": False, "threads": 1})))
    digests = [read_json(d / "manifest.json")["features"]["image"]["sha256"] for d in (data, tmp_path / "data2")]
    assert digests[0] != digests[1]  # the stored rows cannot be copied: they must be encoded again
    direct = tmp_path / "direct"
    shutil.copytree(other, direct)
    served = fresh(shop, "mahn", tmp_path)
    image = {"key": "new2", "title": "With an image", "image": "i000.png", "image_codes": [1, 2, 3, 4],
             "text_codes": [11, 2, 3, 4]}
    add_item_records(served, [NEW, image], shop["images"])
    add_item_records(direct, [NEW, image], shop["images"])
    assert carry_added(served, other) == {"carried": 2, "skipped": []}
    carried, expected = mahn.load(other, device="cpu"), mahn.load(direct, device="cpu")
    for history in (["i000", "new1"], ["new2"]):
        assert ([(r.key, round(r.score, 4)) for r in carried.recommend(history, 8)]
                == [(r.key, round(r.score, 4)) for r in expected.recommend(history, 8)])
