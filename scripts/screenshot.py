"""A full-page screenshot of `mahn serve`'s page (GET /): start the server, pick a user's history, recommend, shoot.

    .venv/bin/python scripts/screenshot.py demo/runs/mahn-seed0 --compare demo/runs/mahn-v-t-seed0 \\
        --out docs/img/serve-page.png

The history is a user's training history, picked on the page as a person would (type the user key, click it);
`--user KEY` chooses the user (default: the first one with at least 4 training items), `--history KEY ...`
gives item keys instead. Needs Playwright and a Chromium (default /usr/bin/chromium); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/servers.py: a child `mahn serve`
from servers import mahn_serve, serving  # noqa: E402


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def server(run: Path, compare: Path | None, device: str):
    """`mahn serve RUN [--compare RUN2]` on a free loopback port."""
    extra = ["--compare", str(compare)] if compare else []
    return serving(lambda port: mahn_serve(str(run), "--port", str(port), "--device", device, *extra), timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--compare", type=Path, help="a second run, shown beside the first")
    parser.add_argument("--out", type=Path, default=Path("docs/img/serve-page.png"))
    parser.add_argument("--user", help="the user whose training history is shown (default: the first with 4+ items)")
    parser.add_argument("--history", nargs="+", metavar="KEY", help="item keys instead of a user's history")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with server(args.run, args.compare, args.device) as served, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        if args.history:
            page.goto(f"{served.url}/?" + urlencode([("item", key) for key in args.history] + [("k", args.k)]))
        else:
            user = args.user or next((u["key"] for u in get(f"{served.url}/users?limit=1000")["users"]
                                      if u["train_items"] >= 4), None)
            if user is None:
                sys.exit("no user has 4 training items: give --user or --history")
            page.goto(f"{served.url}/?k={args.k}")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#user-query", user)
            page.locator("#users button", has_text=f"{user} ·").first.click()
        page.wait_for_selector("#results[data-state=done]")
        page.wait_for_function("[...document.images].every((image) => image.complete)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
