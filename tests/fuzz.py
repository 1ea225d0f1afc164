"""`mahn serve` fuzzed from its own OpenAPI schema with Schemathesis (in process, over ASGI: no network).

Every operation of /openapi.json gets generated requests, schema-valid ("positive") and schema-violating
("negative"), and every response goes through Schemathesis's checks: no 5xx, a documented status code,
content type, headers and body that match the schema, invalid requests refused, valid ones accepted.

Two deliberate settings of those checks, both documented in the API's own schema:
- a schema-valid request may get 400 (an item key that is not in the catalogue, k above the number of
  items: facts about the data that a schema cannot express) or 404 (no such item);
- a schema-violating request may get 413 (a string over its maxLength that also makes the body larger than
  the 1 MiB limit is refused by size before it is parsed).

The shop's 30 item keys are one character each ("0".."9", "a".."t"), so generated strings often name a real
item and requests reach the model, not only the unknown-key check.

Integral floats where the schema says integer (JSON Schema counts 1000.0 as an integer) are sent as
generated: the API takes them as the integers they are.

The harness (the shop, the app, the fuzz loop) is shared by the test (tests/test_serve_fuzz.py) and the bigger
fuzz, which prints operations, cases and failures:
    .venv/bin/python scripts/serve_fuzz.py --examples 300
"""

from __future__ import annotations

import contextlib
import json
import shutil
import string
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode

KEYS = list(string.digits + string.ascii_lowercase)[:30]  # one character each
USERS = list(string.ascii_uppercase + "uvwxyz")  # 32 users, one character each too
CLUSTERS = 3

CONFIG = {
    "checks": {
        # 400: bad data the schema cannot express (unknown key, k > items); 404: no such item
        "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404"]},
        # the default list and 413: a body over the size limit is refused before it is read
        "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413",
                                                          "415", "422", "428", "429"]},
    },
}


def build_shop(root: Path) -> dict:
    """A 30-item shop (users walk through one of 3 clusters), `codes` image and text features (so items can
    be added), local images for every second item; a MAHN run and an ID-only SASRec run, 1 epoch each."""
    from mahn.data.prepare import PrepareConfig, prepare_frames
    from mahn.features import FeatureConfig, extract_features
    from mahn.settings import resolve
    from mahn.training import train

    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(0, len(KEYS), 2):
        Image.new("RGB", (8, 8), (80 * (i % CLUSTERS), 40, 200)).save(images / f"{KEYS[i]}.png")

    def codes(cluster: int, offset: int) -> str:
        return orjson.dumps([offset + cluster, *rng.integers(0, 256, 3).tolist()]).decode()

    rows = []
    for u, user in enumerate(USERS):
        members = [i for i in range(len(KEYS)) if i % CLUSTERS == u % CLUSTERS]
        start = int(rng.integers(len(members)))
        rows += [(user, KEYS[members[(start + p) % len(members)]], p) for p in range(8)]
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64}, orient="row")
    items = pl.DataFrame({"item": KEYS, "title": [f"Item {k} of cluster {i % CLUSTERS}" for i, k in enumerate(KEYS)],
                          "image": [str(images / f"{k}.png") if i % 2 == 0 else None for i, k in enumerate(KEYS)],
                          "image_codes": [codes(i % CLUSTERS, 0) for i in range(len(KEYS))],
                          "text_codes": [codes(i % CLUSTERS, 10) for i in range(len(KEYS))]})
    prepare_frames(frame, items, root / "data", PrepareConfig(num_negatives=10, seed=0))
    extract_features(root / "data", FeatureConfig(image="codes", text="codes", progress=False, workers=1))
    runs = {}
    for name in ("mahn", "sasrec"):
        runs[name] = root / "runs" / name
        train(root / "data", runs[name], resolve(("fuzz", {"model": name, "dim": 8, "epochs": 1, "batch_size": 32,
                                                           "max_len": 6, "seed": 0, "progress": False,
                                                           "threads": 1})))
    return {"root": root, "images": images, "runs": runs}


def make_app(shop: dict, access=None):
    """The app over a fresh copy of the MAHN run (POST /items writes into it), with SASRec as ?run=compare;
    `access`: a token and what it protects (mahn.serve.access.Access; default: none, writes open)."""
    from mahn.serve import create_app
    from mahn.serve.access import Access

    run = shop["root"] / "served"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(shop["runs"]["mahn"], run)
    return create_app(run, device="cpu", compare=shop["runs"]["sasrec"], images_root=shop["images"],
                      access=access or Access())


def describe(case) -> dict:
    body = getattr(case, "body", None)
    # the standard json module: generated bodies may hold integers past 64 bits, which orjson refuses
    shown = json.dumps(body, default=repr, ensure_ascii=False) if body is not None else None
    return {"method": case.method, "path": case.formatted_path, "query": case.query,
            "body": shown[:600] + ("..." if len(shown) > 600 else "") if shown else None}


def _fuzz_one(operation, mode, examples: int, seed: int, report: dict, count: Counter, replay):
    """The Hypothesis test of one operation in one generation mode; it records every case in `report`."""

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case):
        count["cases"] += 1
        response = None
        try:
            response = case.call()
            report["statuses"][response.status_code] += 1
            count[response.status_code] += 1
            case.validate_response(response)
        except (Exception, BaseExceptionGroup) as error:  # every failure is recorded, and fuzzing goes on
            failure = {"operation": operation.label, "mode": mode.value, **describe(case),
                       "status": None if response is None else response.status_code,
                       "checks": [f.title for f in getattr(error, "exceptions", [])] or [repr(error)[:300]],
                       "message": str(error)[:2000]}
            if response is None or response.status_code >= 500:  # the server's own traceback
                try:
                    replay.request(case.method, case.formatted_path, params=case.query, json=case.body)
                except Exception:
                    failure["traceback"] = traceback.format_exc()
            report["failures"].append(failure)

    return one


def fuzz(app, examples: int, seed: int = 0, log=None, token: str | None = None) -> dict:
    """Fuzz every operation of the app's schema, positive and negative, `examples` cases each (fewer when the
    operation has fewer distinct inputs). Failures are collected, not raised, so every case is counted.

    `token`: sent as the bearer token the schema declares; Schemathesis's `ignored_auth` check then also sends
    each guarded operation without it and with a wrong one, and fails when either is let through."""
    from fastapi.testclient import TestClient

    config = {**CONFIG, "auth": {"openapi": {"token": {"bearer": token}}}} if token else CONFIG
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(config))
    replay = TestClient(app, raise_server_exceptions=True,
                        headers={"Authorization": f"Bearer {token}"} if token else None)
    report = {"operations": [], "cases": 0, "statuses": Counter(), "failures": []}
    for result in schema.get_all_operations():
        operation = result.ok()
        report["operations"].append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count = Counter()
            one = _fuzz_one(operation, mode, examples, seed, report, count, replay)
            started = time.perf_counter()
            with contextlib.suppress(Unsatisfiable):  # nothing to violate (no parameters): no negative cases
                one()
            report["cases"] += count["cases"]
            if log:
                statuses = " ".join(f"{s}:{n}" for s, n in sorted((s, n) for s, n in count.items() if s != "cases"))
                log(f"{operation.label:<26} {mode.value:<9} {count['cases']:>5} cases "
                    f"{time.perf_counter() - started:5.1f} s  {statuses}")
    return report
