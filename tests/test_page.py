"""The page of `mahn serve` (GET /) in a real browser: the real server (`mahn serve RUN --compare RUN2`) on a
loopback port, driven by headless Chromium through Playwright. What the page shows is checked against the API.

Skipped only when Chromium (/usr/bin/chromium) or the playwright package is missing: `make test` installs
Chromium first or stops with one line saying how (MAHN_NO_BROWSER=1 skips it on purpose).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from mahn.data import Dataset
from servers import mahn_serve, serving

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow
NO_IMAGE = 0  # the item (row of items.csv) whose image is removed: the page shows a placeholder for it


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """A small demo shop (rendered images, real titles, EfficientNet-Lite0 and MiniLM features), a short MAHN
    training and its ID-only ablation MAHN-V-T. One item has no image."""
    from mahn.data.prepare import PrepareConfig, prepare
    from mahn.demo.shop import generate_demo
    from mahn.features import FeatureConfig, extract_features
    from mahn.readers import ReaderOptions
    from mahn.settings import resolve
    from mahn.training import train

    root = tmp_path_factory.mktemp("page")
    generate_demo(root / "raw", users=400, items=200, seed=0)
    items_csv = root / "raw" / "items.csv"
    with items_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[NO_IMAGE]["image"] = ""
    with items_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    prepare(root / "raw" / "interactions.csv", "csv", root / "data", PrepareConfig(num_negatives=20, seed=0),
            items=items_csv, options=ReaderOptions(time_col="timestamp"))
    extract_features(root / "data", FeatureConfig(progress=False, workers=1))
    runs = {}
    for name, ablate in (("mahn", ""), ("mahn-v-t", "vt")):
        runs[name] = root / "runs" / name
        train(root / "data", runs[name], resolve(("test", {"model": "mahn", "ablate": ablate, "dim": 16, "epochs": 3,
                                                           "lr": 0.005, "batch_size": 64, "max_len": 10, "seed": 0,
                                                           "progress": False, "threads": 1})))
    return {"data": root / "data", "runs": runs, "no_image": rows[NO_IMAGE]["item"]}


@pytest.fixture(scope="module")
def base(shop) -> str:
    """`mahn serve` of the MAHN run with MAHN-V-T beside it; yields its URL."""
    runs = shop["runs"]
    with serving(lambda port: mahn_serve(str(runs["mahn"]), "--compare", str(runs["mahn-v-t"]), "--port", str(port),
                                         "--device", "cpu")) as served:
        yield served.url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, base):
    """A fresh page; fails the test on a JavaScript error or a request to anywhere but the server."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
    page.on("request", lambda request: None if request.url.startswith((base + "/", "data:"))
            else problems.append(f"request outside the server: {request.url}"))
    yield page
    context.close()
    assert not problems, problems


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def recommend(page, k: int) -> None:
    page.fill("#k", str(k))
    page.evaluate("document.getElementById('results').dataset.state = 'asked'")  # not 'done' from before
    page.click("#recommend")
    page.wait_for_selector("#results[data-state=done]")


def check_column(page, base: str, run: str, history: list[str], k: int) -> None:
    """The run's column shows exactly what POST /recommend answers: keys, titles, scores, images."""
    answer = httpx.post(f"{base}/recommend?run={run}", json={"history": history, "k": k}, timeout=30)
    assert answer.status_code == 200, answer.text
    expected = answer.json()["items"]
    cards = page.locator(f".column[data-run={run}] ol .card")
    expect(cards).to_have_count(k)
    for card, item in zip(cards.all(), expected, strict=True):
        assert card.get_attribute("data-key") == item["key"]
        assert card.locator(".title").inner_text() == item["title"]
        score = card.locator(".score")
        assert float(score.get_attribute("data-score")) == item["score"]  # the exact double the API sent
        shown = float(re.search(r"score (-?\d+\.\d+)", score.inner_text()).group(1))
        assert abs(shown - item["score"]) <= 5e-5
        check_picture(card, item)


def check_picture(card, item: dict) -> None:
    if item["image_url"]:
        image = card.locator("img")
        expect(image).to_have_count(1)
        assert image.evaluate("i => i.complete && i.naturalWidth") > 0, f"image of {item['key']} did not load"
    else:
        expect(card.locator(".placeholder")).to_have_count(1)
        expect(card.locator("img")).to_have_count(0)


def test_search_two_items_and_see_both_runs_top_k_as_the_api_ranks_them(page, base):
    first = httpx.get(f"{base}/items", params={"limit": 1}).json()["items"][0]
    query = first["title"].split()[1]  # the colour: shared by many items
    found = httpx.get(f"{base}/items", params={"query": query, "limit": 12}).json()["items"]
    assert len(found) >= 2

    open_page(page, base)
    page.fill("#query", query.upper())  # search is case-insensitive
    results = page.locator("#found li button")
    expect(results).to_have_count(len(found))
    results.nth(0).click()
    results.nth(1).click()
    history = [found[0]["key"], found[1]["key"]]
    expect(page.locator("#history .card")).to_have_count(2)
    assert [c.get_attribute("data-key") for c in page.locator("#history .card").all()] == history

    k = 7
    recommend(page, k)
    assert not page.locator("#error").is_visible()
    for run in ("main", "compare"):
        info = httpx.get(f"{base}/model", params={"run": run}).json()
        column = page.locator(f".column[data-run={run}]")
        assert info["name"] in column.locator(".meta").inner_text()
        check_column(page, base, run, history, k)
    assert page.locator(".column[data-run=main] h2").inner_text() == "MAHN"
    assert page.locator(".column[data-run=compare] h2").inner_text() == "MAHN-V-T"

    page.locator("#history .card .remove").nth(0).click()  # removable: the history is now the second item
    recommend(page, 3)
    check_column(page, base, "main", history[1:], 3)
    page.reload()  # the URL keeps the history and k
    page.wait_for_selector("#results[data-state=done]")
    check_column(page, base, "compare", history[1:], 3)


def test_an_item_without_an_image_gets_a_placeholder(page, base, shop):
    item = httpx.get(f"{base}/items/{quote(shop['no_image'])}").json()
    assert item["image_url"] is None
    open_page(page, base)
    page.fill("#key", item["key"])
    page.click("#by-key button")
    expect(page.locator("#history .card")).to_have_count(1)
    check_picture(page.locator("#history .card"), item)
    recommend(page, 5)
    check_column(page, base, "main", [item["key"]], 5)


def test_a_users_training_history_is_picked_and_its_held_out_items_named(page, base, shop):
    dataset = Dataset(shop["data"])
    keys = dataset.item_metadata["key"].to_list()
    users = httpx.get(f"{base}/users", params={"query": "USER", "limit": 1000}).json()["users"]
    assert len(users) == dataset.n_users
    user = next(u for u, entry in enumerate(users) if entry["train_items"] >= 3 and dataset.evaluated[u])
    key = users[user]["key"]
    train = [keys[i] for i in dataset.items[dataset.offsets[user] : dataset.train_ends[user]]]
    held_out = [keys[i] for i in dataset.items[dataset.train_ends[user] : dataset.offsets[user + 1]]]
    answer = httpx.get(f"{base}/users/{quote(key)}/history").json()
    assert [i["key"] for i in answer["history"]] == train and users[user]["train_items"] == len(train)
    assert [i["key"] for i in answer["held_out"]] == held_out and len(held_out) == 2
    assert httpx.get(f"{base}/users/nobody/history").status_code == 404

    open_page(page, base)
    page.fill("#user-query", key)
    page.locator("#users button", has_text=f"{key} ·").click()
    page.wait_for_selector("#results[data-state=done]")
    assert [c.get_attribute("data-key") for c in page.locator("#history .card").all()] == train
    expect(page.locator("#history-note")).to_contain_text(answer["held_out"][1]["title"] + " (test)")
    check_column(page, base, "main", train, 10)


def test_api_errors_are_shown_on_the_page(page, base):
    open_page(page, f"{base}/?user=nobody")  # an unknown user in the URL
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text("unknown user key: nobody")

    page.fill("#key", "no-such-item")  # an unknown item key
    page.click("#by-key button")
    expect(page.locator("#error-text")).to_have_text("unknown item key(s): no-such-item")
    expect(page.locator("#history .card")).to_have_count(0)

    first = httpx.get(f"{base}/items", params={"limit": 1}).json()["items"][0]
    page.fill("#key", first["key"])
    page.click("#by-key button")
    expect(page.locator("#error")).to_be_hidden()
    recommend(page, 999)  # more than the run has: the library's 400, shown in each column as the API words it
    for run in ("main", "compare"):
        answer = httpx.post(f"{base}/recommend?run={run}", json={"history": [first["key"]], "k": 999})
        assert answer.status_code == 400 and "k must be between 1 and the number of items" in answer.json()["detail"]
        column = page.locator(f".column[data-run={run}]")
        expect(column.locator(".column-error")).to_have_text(answer.json()["detail"])
        expect(column.locator(".card")).to_have_count(0)
    recommend(page, 0)  # refused by the schema: FastAPI's 422, shown as field: message
    expect(page.locator(".column[data-run=main] .column-error")).to_contain_text("k: Input should be greater")
    assert page.locator("h1").inner_text() == "mahn"  # never a blank page


def test_the_page_is_served_by_the_app_itself(base):
    page = httpx.get(base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("page.js", "javascript"), ("page.css", "text/css")):
        asset = httpx.get(f"{base}/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing fetched from elsewhere
    assert "http" not in page.text
    assert "/" not in httpx.get(f"{base}/openapi.json").json()["paths"]  # the page is not part of the API


def test_a_server_that_guards_its_reads_asks_for_the_token_once(browser, shop, tmp_path):
    """`mahn serve --protect all`: the page asks for the token on its first refused call, then every call and
    every image carries it; the recommendations are the API's."""
    token = "page-token-page-token-0123"
    (tmp_path / "token").write_text(token)
    headers = {"Authorization": f"Bearer {token}"}
    run = str(shop["runs"]["mahn"])
    with serving(lambda port: mahn_serve(run, "--port", str(port), "--device", "cpu", "--token-file",
                                         str(tmp_path / "token"), "--protect", "all")) as served:
        assert httpx.get(f"{served.url}/items").status_code == 401
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        asked, errors = [], []
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(token)))
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_page(page, served.url)
        found = httpx.get(f"{served.url}/items", params={"limit": 2}, headers=headers).json()["items"]
        page.fill("#query", found[0]["title"])
        page.locator("#found li button").nth(0).click()
        recommend(page, 5)
        expected = httpx.post(f"{served.url}/recommend?run=main", json={"history": [found[0]["key"]], "k": 5},
                              headers=headers).json()["items"]
        cards = page.locator(".column[data-run=main] ol .card")
        assert [c.get_attribute("data-key") for c in cards.all()] == [item["key"] for item in expected]
        with_image = [(card, item) for card, item in zip(cards.all(), expected, strict=True) if item["image_url"]]
        assert with_image
        for card, _ in with_image:  # fetched with the token, shown from memory
            card.locator("img").evaluate("i => i.complete || new Promise(r => i.onload = r)")
            assert card.locator("img").evaluate("i => i.naturalWidth") > 0
        assert len(asked) == 1 and "token" in asked[0] and not errors
        context.close()
