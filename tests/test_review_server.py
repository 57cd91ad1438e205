"""emdcli review's server: the token on every request, images by number only, 4xx that change nothing, and a
real headless browser driving the page with the keyboard (skipped, saying why, without chromium)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from emdcli.features.source import FeatureSource
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier
from emdcli.tasks.review import Journal, Review, journal_path
from emdcli.tasks.review_server import MAX_BODY, ReviewServer
from tests.conftest import make_image


@pytest.fixture()
def inbox(tmp_path: Path) -> list[Path]:
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (225, 35, 30)]
    return [make_image(tmp_path / "inbox" / f"q{i}.png", c, seed=400 + i) for i, c in enumerate(colours)]


def serve(tiny_model: Path, support: Path, queries: list[Path]) -> ReviewServer:
    review = Review.start(Classifier(FeatureSource(Backbone(tiny_model))), support, queries)
    return ReviewServer(review).start()


def request(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_every_request_needs_the_token(tiny_model: Path, support_dir: Path, inbox: list[Path]) -> None:
    server = serve(tiny_model, support_dir, inbox)
    try:
        base = f"http://127.0.0.1:{server.port}"
        wrong = server.token[:-1] + ("y" if server.token.endswith("x") else "x")  # another token, always
        for path in ("/", "/api/state", "/img/q/0", f"/?token={wrong}"):
            assert request(base + path)[0] == 403, path
        assert request(base + "/api/decide", {"id": 0, "action": "skip"})[0] == 403
        assert not journal_path(support_dir).exists()
        status, page = request(server.url)
        assert status == 200 and b"emdcli review" in page
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.stop()


def test_images_are_served_by_number_and_a_path_is_refused(
    tiny_model: Path, support_dir: Path, inbox: list[Path]
) -> None:
    server = serve(tiny_model, support_dir, inbox)
    try:
        base, token = f"http://127.0.0.1:{server.port}", f"?token={server.token}"
        assert request(f"{base}/img/q/1{token}") == (200, inbox[1].read_bytes())
        example = server.review.examples[server.review.classes[0]][0][0]
        assert request(f"{base}/img/s/0/0{token}") == (200, example.read_bytes())
        for path in ("/img/q/99", "/img/q/../../etc/passwd", "/img/q/%2e%2e%2fconftest.py", "/img/s/0/99",
                     f"/img/q/{inbox[0]}", "/tests/conftest.py"):  # fmt: skip
            assert request(f"{base}{path}{token}")[0] == 404, path
    finally:
        server.stop()


def test_a_malformed_or_large_request_changes_nothing(tiny_model: Path, support_dir: Path, inbox: list[Path]) -> None:
    server = serve(tiny_model, support_dir, inbox)
    try:
        decide = f"http://127.0.0.1:{server.port}/api/decide?token={server.token}"
        before = sorted(p.name for p in support_dir.rglob("*"))
        assert request(decide, raw=b"{not json")[0] == 400
        assert request(decide, raw=b" " * (MAX_BODY + 1))[0] == 413
        assert request(decide, {"id": "0", "action": "accept"})[0] == 400
        assert request(decide, {"id": 0, "action": "delete"})[0] == 409
        assert request(decide, {"id": 0, "action": "correct", "label": "../../outside"})[0] == 409
        assert request(decide, {"id": 0, "action": "correct", "label": 7})[0] == 400
        assert sorted(p.name for p in support_dir.rglob("*")) == before and not journal_path(support_dir).exists()
        status, body = request(decide, {"id": 0, "action": "correct", "label": "green"})
        assert status == 200 and json.loads(body)["decided"] == 1
        assert (support_dir / "green" / "q0.png").is_file()
    finally:
        server.stop()


# the page in a real browser ---------------------------------------------------------------------------------


def browser() -> Any:
    """Headless Chromium driven by Selenium through the system's chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the test extra)")
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt install chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_until(condition: Any, what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_person_reviews_with_the_keyboard_and_a_restart_goes_on(
    tiny_model: Path, support_dir: Path, inbox: list[Path], tmp_path: Path
) -> None:
    driver = browser()
    server = serve(tiny_model, support_dir, inbox)
    journal = Journal(journal_path(support_dir))
    try:
        from selenium.webdriver.common.by import By

        driver.get(f"http://127.0.0.1:{server.port}/")
        assert "token is needed" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(server.url)
        wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".item")) == 4, "the four queries")
        body = driver.find_element(By.TAG_NAME, "body")

        def press(key: str, entries: int) -> dict[str, Any]:
            body.send_keys(key)
            wait_until(lambda: len(journal.read()) == entries, f"journal entry {entries} after {key!r}")
            wait_until(lambda: "done" in driver.find_element(By.ID, "status").text or key == "u", "the page")
            return journal.read()[-1]

        first = press("a", 1)  # accept the focused (least certain) query
        assert first["action"] == "accept" and (support_dir / first["placed"]).is_file()
        wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".item")) == 3, "three left")
        second = press("2", 2)  # correct the next one to the second class
        assert second["label"] == server.review.classes[1] and (support_dir / second["placed"]).is_file()
        third = press("n", 3)
        assert third["action"] == "none" and third["placed"] is None
        undo = press("u", 4)
        assert undo["action"] == "undo" and undo["undoes"] == 3
        wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".item")) == 2, "the undone one back")
    finally:
        server.stop()  # killed mid-session
    restarted = serve(tiny_model, support_dir, inbox)
    try:
        driver.get(restarted.url)
        wait_until(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, ".item")) == 2, "the same two left after a restart"
        )
        assert len(restarted.review.decided) == 2
        assert (support_dir / first["placed"]).is_file() and (support_dir / second["placed"]).is_file()
    finally:
        restarted.stop()
        driver.quit()
