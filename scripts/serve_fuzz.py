"""The bigger Schemathesis fuzz of `mahn serve`: every operation of its OpenAPI schema, positive and negative, with
a count of cases, statuses and failures (the harness and its deliberate settings: tests/fuzz.py).

    .venv/bin/python scripts/serve_fuzz.py --examples 300
    .venv/bin/python scripts/serve_fuzz.py --examples 100 --protect-all   # every operation behind a token
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz import build_shop, fuzz, make_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="A bigger Schemathesis fuzz of `mahn serve`; prints operations, "
                                                 "cases generated and failures.")
    parser.add_argument("--examples", type=int, default=300, help="Cases per operation and mode [300].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protect-all", action="store_true",
                        help="Serve with a token guarding every operation (`mahn serve --protect all`) and give it "
                             "to Schemathesis, whose ignored_auth check also sends each one without it.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        from mahn.serve.access import Access

        token = secrets.token_urlsafe(24) if args.protect_all else None
        app = make_app(build_shop(Path(tmp)), Access(token, "all") if token else None)
        print(f"shop built in {time.perf_counter() - started:.1f} s; fuzzing with schemathesis "
              f"{version('schemathesis')}, {args.examples} examples per operation and mode, seed {args.seed}")
        report = fuzz(app, args.examples, args.seed, log=print, token=token)
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(report["statuses"].items()))
    print(f"\noperations: {len(report['operations'])} ({', '.join(report['operations'])})")
    print(f"cases: {report['cases']} (responses {statuses})")
    print(f"failures: {len(report['failures'])}; 5xx: {sum(n for s, n in report['statuses'].items() if s >= 500)}")
    kinds = Counter((f["operation"], f["status"], tuple(f["checks"])) for f in report["failures"])
    for (label, status, checks), n in kinds.most_common():
        print(f"  {n:>4} x {label} -> {status}: {'; '.join(checks)}")
    for failure in report["failures"][:3]:
        print(orjson.dumps(failure, option=orjson.OPT_INDENT_2).decode())
    print(f"total {time.perf_counter() - started:.1f} s")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
