"""A screenshot of the web page answering a search, for docs/ and the README.

    .venv/bin/python bench/page_screenshot.py --url http://127.0.0.1:8000/ --query "we are hiring engineers"

Drives Debian's Chromium (/usr/bin/chromium) with Playwright against a running `cli.py serve`;
prints the hits the page shows and saves docs/page.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--query", default="we are hiring engineers")
    parser.add_argument("--index", default="adobe", help="The index to search.")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--draft", default=None, help="Also predict likes for this draft text.")
    parser.add_argument("--username", default=None, help="The draft's account.")
    parser.add_argument("--draft-index", default="labelled", help="An index with likes, for the draft.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(args.url)
        page.wait_for_selector("#index option", state="attached")
        if args.draft:
            page.select_option("#index", args.draft_index)
            page.fill("#draft-text", args.draft)
            page.fill("#draft-username", args.username or "")
            page.click("#draft-form button[type=submit]")
            page.wait_for_selector("#prediction:not([hidden]), #draft-status.error")
        page.select_option("#index", args.index)
        page.click("summary")
        page.fill("#f-k", str(args.k))
        page.fill("#query", args.query)
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#results li")
        for n, card in enumerate(page.locator("#results li").all(), 1):
            print(n, " ".join(card.inner_text().split())[:150])
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
