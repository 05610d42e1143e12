"""`autofeedback label`: the labeling page and its JSON API (issue #9). Offline; the browser test needs chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autofeedback import label_server, label_studio, tables
from autofeedback.config import LabelConfig
from autofeedback.shapes.demo import make_rendered_run

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token"


# ============================================================================================ helpers
@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3, seed=0)  # 12 images, 12 pairs


def serve(run_dir: Path, **kw) -> label_server.LabelServer:
    cfg = LabelConfig(run_dir=run_dir, port=0, token=TOKEN, **kw)
    return label_server.LabelServer(cfg).start()


def call(base: str, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def nxt(base: str, who: str) -> dict | None:
    status, d = call(base, "GET", f"/api/next?annotator={who}")
    assert status == 200, d
    return d["item"]


def post(base: str, path: str, who: str, **body) -> dict:
    status, d = call(base, "POST", path, {"token": TOKEN, "annotator": who, **body})
    assert status == 200, d
    return d


def rows(run_dir: Path, annotator: str | None = None) -> list[dict]:
    return label_server.live_labels(run_dir, annotator)


def shard_listing(run_dir: Path) -> list[str]:
    p = tables.table_path(run_dir, "human_labels")
    return sorted(x.name for x in p.iterdir()) if p.exists() else []


# ============================================================================================ API
def test_pointwise_label_resume_and_undo(run_dir):
    with serve(run_dir, annotator="alice") as s:
        seen = []
        for answer in ["good", "bad", "good"]:
            item = nxt(s.url, "alice")
            seen.append(item)
            d = post(s.url, "/api/label", "alice", item_id=item["item_id"], label=answer)
            assert d["progress"]["labeled"] == len(seen)
        assert call(s.url, "GET", "/api/progress?annotator=alice")[1]["labeled"] == 3
    got = {r["image_ids"][0]: r for r in rows(run_dir)}
    assert {k: r["label"] for k, r in got.items()} == {
        seen[0]["image_ids"][0]: True, seen[1]["image_ids"][0]: False, seen[2]["image_ids"][0]: True}
    r0 = got[seen[0]["image_ids"][0]]
    assert r0["annotator"] == "alice" and r0["mode"] == "pointwise" and r0["created_at"] is not None
    assert r0["prompt_id"] == seen[0]["prompt_id"] and r0["category"] == seen[0]["category"]
    assert r0["label_id"] == label_server.label_id("alice", "pointwise", seen[0]["image_ids"])

    # a new server resumes: labeled items are not shown again
    with serve(run_dir) as s:
        assert call(s.url, "GET", "/api/progress?annotator=alice")[1]["labeled"] == 3
        item = nxt(s.url, "alice")
        assert item["item_id"] not in {x["item_id"] for x in seen}
        # undo with no history in this session: the newest label of the earlier session
        d = post(s.url, "/api/undo", "alice")
        assert d["undone"] == seen[2]["item_id"] and d["item"]["item_id"] == seen[2]["item_id"]
        assert d["progress"]["labeled"] == 2
        assert {r["image_ids"][0] for r in rows(run_dir)} == {seen[0]["image_ids"][0], seen[1]["image_ids"][0]}
        # relabel it the other way: supersedes the tombstone, the table holds the final answer
        post(s.url, "/api/label", "alice", item_id=seen[2]["item_id"], label="bad")
        # relabel an already-labeled item: newest row wins, one row per key
        post(s.url, "/api/label", "alice", item_id=seen[0]["item_id"], label=False)
    final = {r["image_ids"][0]: r["label"] for r in rows(run_dir)}
    assert final == {seen[0]["image_ids"][0]: False, seen[1]["image_ids"][0]: False, seen[2]["image_ids"][0]: False}
    raw = tables.read(tables.table_path(run_dir, "human_labels"), "human_labels")
    assert raw.num_rows == 3  # newest row per label_id


def test_skip_and_undo_in_session(run_dir):
    with serve(run_dir) as s:
        first = nxt(s.url, "bob")
        post(s.url, "/api/skip", "bob", item_id=first["item_id"])
        second = nxt(s.url, "bob")
        assert second["item_id"] != first["item_id"]
        post(s.url, "/api/label", "bob", item_id=second["item_id"], label="good")
        assert post(s.url, "/api/undo", "bob")["undone"] == second["item_id"]  # the label
        assert rows(run_dir, "bob") == []
        assert post(s.url, "/api/undo", "bob")["undone"] == first["item_id"]  # then the skip
        assert nxt(s.url, "bob")["item_id"] == first["item_id"]
        assert post(s.url, "/api/undo", "bob")["undone"] is None  # nothing left
        # label everything but the skipped one: the skipped item comes back last
        post(s.url, "/api/skip", "bob", item_id=first["item_id"])
        for _ in range(11):
            item = nxt(s.url, "bob")
            assert item["item_id"] != first["item_id"]
            post(s.url, "/api/label", "bob", item_id=item["item_id"], label="bad")
        assert nxt(s.url, "bob")["item_id"] == first["item_id"]
        post(s.url, "/api/label", "bob", item_id=first["item_id"], label="good")
        assert nxt(s.url, "bob") is None
        p = call(s.url, "GET", "/api/progress?annotator=bob")[1]
        assert (p["labeled"], p["total"], p["remaining"], p["skipped"]) == (12, 12, 0, 0)
    assert len(rows(run_dir, "bob")) == 12


def test_several_annotators_have_their_own_queues(run_dir):
    with serve(run_dir) as s:
        a = [nxt(s.url, "alice")]
        post(s.url, "/api/label", "alice", item_id=a[0]["item_id"], label="good")
        a.append(nxt(s.url, "alice"))
        post(s.url, "/api/label", "alice", item_id=a[1]["item_id"], label="bad")
        b = nxt(s.url, "bob")
        assert b["item_id"] == a[0]["item_id"]  # same seeded order: annotators overlap early
        post(s.url, "/api/label", "bob", item_id=b["item_id"], label="bad")
        p = call(s.url, "GET", "/api/progress")[1]
        assert p["annotators"] == {"alice": 2, "bob": 1} and p["total"] == 12
        post(s.url, "/api/undo", "bob")  # bob's undo leaves alice's labels alone
    assert len(rows(run_dir, "alice")) == 2 and rows(run_dir, "bob") == []


def test_concurrent_annotators_lose_nothing(run_dir):
    import threading

    errors = []
    with serve(run_dir) as s:
        def work(who):
            try:
                for _ in range(6):
                    item = nxt(s.url, who)
                    post(s.url, "/api/label", who, item_id=item["item_id"], label=who == "p0")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f"p{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for i in range(3):
        got = rows(run_dir, f"p{i}")
        assert len(got) == 6 and all(r["label"] == (i == 0) for r in got)


def test_pairwise_items_sides_and_choices(run_dir):
    with serve(run_dir, mode="pairwise") as s:
        assert len(s.store.items) == 4 * 3  # 3 pairs of 3 images, 4 prompts
        prompt_of = {k: v["prompt_id"] for k, v in s.store.items.items()}
        flips = 0
        for key in s.store.items:
            x, y = s.store.shown("ann", key), s.store.shown("other", key)
            assert sorted(x["image_ids"]) == sorted(y["image_ids"])
            flips += x["image_ids"] != y["image_ids"]
        assert 0 < flips < 12  # left/right drawn per annotator
        answers = ["A", "B", "tie"]
        shown = []
        for ans in answers:
            item = nxt(s.url, "ann")
            shown.append(item)
            assert prompt_of[item["item_id"]] == item["prompt_id"] and len(item["images"]) == 2
            post(s.url, "/api/label", "ann", item_id=item["item_id"], choice=ans)
        item = nxt(s.url, "ann")
        post(s.url, "/api/label", "ann", item_id=item["item_id"], choice=item["image_ids"][1])  # an image id
        shown.append(item)
        status, _ = call(s.url, "POST", "/api/label", {"token": TOKEN, "annotator": "ann",
                                                        "item_id": item["item_id"], "choice": "C"})
        assert status == 400
    got = {tuple(r["image_ids"]): r["choice"] for r in rows(run_dir, "ann")}
    assert got == {tuple(shown[0]["image_ids"]): shown[0]["image_ids"][0],
                   tuple(shown[1]["image_ids"]): shown[1]["image_ids"][1],
                   tuple(shown[2]["image_ids"]): "tie",
                   tuple(shown[3]["image_ids"]): shown[3]["image_ids"][1]}
    assert {r["mode"] for r in rows(run_dir)} == {"pairwise"}


def test_image_endpoint_serves_png(run_dir):
    with serve(run_dir) as s:
        item = nxt(s.url, "alice")
        with urllib.request.urlopen(s.url.rstrip("/") + item["images"][0], timeout=10) as r:
            assert r.headers["Content-Type"] == "image/png"
            assert r.read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert call(s.url, "GET", "/img/nope")[0] == 404
        with urllib.request.urlopen(s.url, timeout=10) as r:
            page = r.read().decode()
        assert TOKEN in page and '<link rel="stylesheet" href="/static/label.css">' in page
        assert '<script src="/static/label.js"></script>' in page


def test_page_static_files_are_served_from_the_package(run_dir):
    """The page's style and script are package data (autofeedback/templates/label/), served at /static/."""
    with serve(run_dir) as s:
        for name, ctype, needle in [("label.css", "text/css", "image-rendering: pixelated"),
                                    ("label.js", "text/javascript", 'getElementById("conf")')]:
            with urllib.request.urlopen(f"{s.url}static/{name}", timeout=10) as r:
                assert r.headers["Content-Type"] == f"{ctype}; charset=utf-8"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert needle in r.read().decode()
        with urllib.request.urlopen(s.url, timeout=10) as r:  # the page may run its own static files only
            csp = dict(d.strip().split(" ", 1) for d in r.headers["Content-Security-Policy"].split(";"))
            assert csp["script-src"] == csp["style-src"] == csp["img-src"] == "'self'"
            assert csp["default-src"] == "'none'" and "unsafe-inline" not in r.headers["Content-Security-Policy"]
        for path in ("/static/index.html.j2", "/static/../label_server.py", "/static/", "/static/label.css/x"):
            assert call(s.url, "GET", path)[0] == 404, path  # the two files only, never another


def test_page_settings_cannot_break_out_of_their_json_block(run_dir):
    """?annotator= is the visitor's text: it reaches the page only inside the JSON block, with <, > and & escaped."""
    from urllib.parse import quote

    evil = '</script><script>alert(1)</script><!--'
    with serve(run_dir) as s:
        with urllib.request.urlopen(f"{s.url}?annotator={quote(evil)}", timeout=10) as r:
            page = r.read().decode()
    assert page.count("<script") == 2 and evil not in page
    block = page.split('<script id="conf" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block) == {"mode": "pointwise", "token": TOKEN, "annotator": evil}


# ============================================================================================ ordering
def test_order_random_is_seeded(run_dir):
    def order(**kw):
        with serve(run_dir, **kw) as s:
            return list(s.store.order)

    assert order(seed=1) == order(seed=1)
    assert order(seed=1) != order(seed=2)
    assert sorted(order(seed=1)) == sorted(order(seed=2))


def test_order_stratified_round_robins_over_categories(run_dir):
    with serve(run_dir, order="stratified") as s:
        cats = [s.store.items[k]["category"] for k in s.store.order]
    distinct = len(set(cats))
    assert distinct >= 2
    n = 0  # every window of `distinct` items covers every category while all categories still have items
    counts = {c: cats.count(c) for c in set(cats)}
    rounds = min(counts.values())
    for r in range(rounds):
        assert len(set(cats[r * distinct:(r + 1) * distinct])) == distinct
        n += 1
    assert n == rounds


def _judgment(judge, mode, pid, ids, label=None, choice=None):
    return {"request_id": tables.content_id(judge, mode, ids), "judge": judge, "mode": mode, "template": "t",
            "prompt_id": pid, "image_ids": ids, "label": label, "choice": choice, "status": "ok",
            "created_at": tables.now()}


def test_order_disagreements_first(run_dir):
    images = tables.read(tables.table_path(run_dir, "images"), "images", columns=["image_id", "prompt_id"])
    imgs = images.to_pylist()
    rows_ = []
    for i, im in enumerate(imgs):  # two judges agree everywhere except on images 5 and 9
        rows_.append(_judgment("j1", "pointwise", im["prompt_id"], [im["image_id"]], label=True))
        rows_.append(_judgment("j2", "pointwise", im["prompt_id"], [im["image_id"]], label=i not in (5, 9)))
    # pairwise: j1 asked in both orders answers by position (order-inconsistent) on one pair
    a, b, c = [im["image_id"] for im in imgs if im["prompt_id"] == imgs[0]["prompt_id"]]
    pid = imgs[0]["prompt_id"]
    rows_ += [_judgment("j1", "pairwise", pid, [a, b], choice=a), _judgment("j1", "pairwise", pid, [b, a], choice=b),
              _judgment("j1", "pairwise", pid, [a, c], choice=a), _judgment("j1", "pairwise", pid, [c, a], choice=a)]
    tables.append(tables.table_path(run_dir, "judgments"), rows_, "judgments")
    with serve(run_dir, order="disagreements") as s:
        first = [s.store.items[k]["image_ids"][0] for k in s.store.order[:2]]
        assert set(first) == {imgs[5]["image_id"], imgs[9]["image_id"]}
        assert nxt(s.url, "x")["image_ids"][0] in first
    with serve(run_dir, order="disagreements", mode="pairwise") as s:
        assert sorted(s.store.items[s.store.order[0]]["image_ids"]) == sorted([a, b])
        assert sorted(s.store.items[s.store.order[1]]["image_ids"]) != sorted([a, c])


# ============================================================================================ bad requests
def test_bad_requests_get_4xx_and_write_nothing(run_dir):
    with serve(run_dir) as s:
        item = nxt(s.url, "alice")
        post(s.url, "/api/label", "alice", item_id=item["item_id"], label="good")
        before = shard_listing(run_dir)
        good = {"token": TOKEN, "annotator": "alice", "item_id": nxt(s.url, "alice")["item_id"], "label": "good"}
        cases = [
            ("/api/label", {**good, "item_id": "no-such-item"}, None, 404),
            ("/api/label", None, b"{not json", 400),
            ("/api/label", None, b"[1, 2]", 400),
            ("/api/label", {**good, "token": "wrong"}, None, 403),
            ("/api/label", {k: v for k, v in good.items() if k != "token"}, None, 403),
            ("/api/label", {**good, "label": "maybe"}, None, 400),
            ("/api/label", {**good, "label": None}, None, 400),
            ("/api/label", {**good, "annotator": ""}, None, 400),
            ("/api/label", {**good, "annotator": "<script>"}, None, 400),
            ("/api/label", {**good, "item_id": ["x"]}, None, 404),
            ("/api/undo", {**good, "token": "wrong"}, None, 403),
            ("/api/skip", {**good, "item_id": "nope"}, None, 404),
            ("/api/delete", good, None, 404),
        ]
        for path, body, raw, want in cases:
            status, d = call(s.url, "POST", path, body, raw=raw)
            assert status == want, (path, body, raw, d)
            assert isinstance(d.get("error"), str) and d["error"]
        assert call(s.url, "GET", "/api/next")[0] == 400  # no annotator
        assert call(s.url, "GET", "/api/nope")[0] == 404
        # no Content-Length
        import http.client

        host, port = s.httpd.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.putrequest("POST", "/api/label")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 411 and "error" in json.loads(resp.read())
        conn.close()
        assert shard_listing(run_dir) == before
        assert call(s.url, "GET", "/api/progress?annotator=alice")[1]["labeled"] == 1
        assert post(s.url, "/api/label", "alice", **{k: good[k] for k in ("item_id", "label")})["ok"]
    assert len(rows(run_dir, "alice")) == 2


# ============================================================================================ CLI + kill
def test_cli_server_killed_loses_no_label(run_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autofeedback.cli", "label", str(run_dir), "--port", "0",
                             "--token", TOKEN, "--annotator", "kim"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "open http://" in line, line
        base = line.split("open ")[1].split("?")[0].split()[0]
        labeled = {}
        for i in range(5):
            item = nxt(base, "kim")
            post(base, "/api/label", "kim", item_id=item["item_id"], label="good" if i % 2 else "bad")
            labeled[item["image_ids"][0]] = bool(i % 2)
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the last response: no shutdown, no flush
        proc.wait(timeout=10)
    got = {r["image_ids"][0]: r["label"] for r in rows(run_dir, "kim")}
    assert got == labeled
    tables.read(tables.table_path(run_dir, "human_labels"), "human_labels")  # the table reads cleanly


def test_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "autofeedback.cli", "label", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "no images table" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "autofeedback.cli", "label", str(tmp_path), "--mode", "listwise"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "mode" in r.stderr


def test_cli_label_studio_export(run_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "tasks.json"
    r = subprocess.run([sys.executable, "-m", "autofeedback.cli", "label", str(run_dir), "--mode", "pairwise",
                        "--export-label-studio", str(out)], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    assert "wrote 12 tasks" in r.stdout and len(json.loads(out.read_text())) == 12
    r = subprocess.run([sys.executable, "-m", "autofeedback.cli", "label", str(run_dir), "--export-label-studio",
                        str(out), "--import-label-studio", str(out)], capture_output=True, text=True, cwd=REPO,
                       env=env)
    assert r.returncode == 2 and "not both" in r.stderr


# ============================================================================================ browser
def _driver(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    have = Path(chromium).exists() and Path(driver).exists()
    if not have and os.environ.get("AUTOFEEDBACK_REQUIRE_BROWSER") == "1":  # .ci/run: a skip would be a test not run
        pytest.fail("AUTOFEEDBACK_REQUIRE_BROWSER=1 but chromium or chromedriver is missing")
    if not have:
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800", f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    drv = _driver(tmp_path_factory.mktemp("chromium"))
    # the page's viewport is exactly 1280x800 (a window of that size has less room for the page)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


def _fits(drv) -> None:
    size = drv.execute_script("return [document.documentElement.scrollWidth, "
                              "document.documentElement.scrollHeight, innerWidth, innerHeight]")
    assert size[2:] == [1280, 800] and size[0] <= size[2] and size[1] <= size[3], size


def test_browser_keyboard_labeling(run_dir, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv = browser
    with serve(run_dir, annotator="carol") as s:
        drv.get(s.url)
        wait = WebDriverWait(drv, 10)
        body = drv.find_element(By.TAG_NAME, "body")

        def progress():
            return drv.find_element(By.ID, "progress").text

        def current():
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images img"))
            return drv.find_element(By.CSS_SELECTOR, "#images img").get_attribute("data-image-id")

        def press(key, want_progress):
            body.send_keys(key)
            wait.until(lambda d: progress().startswith(want_progress))

        wait.until(lambda d: progress().startswith("0 / 12"))
        assert "G" in drv.find_element(By.ID, "keys").text and "Backspace" in drv.find_element(By.ID, "keys").text
        expected = {}
        for key, value, n in [("g", True, 1), ("b", False, 2), ("g", True, 3)]:
            img = current()
            press(key, f"{n} / 12")
            expected[img] = value
        img = current()
        press("s", "3 / 12 labeled (1 skipped)")  # skip: nothing written
        assert current() != img
        img = current()
        press("b", "4 / 12")
        expected[img] = False
        press("u", "3 / 12")  # undo the last label: it is shown again
        assert current() == img
        del expected[img]
        from selenium.webdriver.common.keys import Keys

        press("g", "4 / 12")
        expected[img] = True
        press(Keys.BACKSPACE, "3 / 12")  # Backspace undoes too
        del expected[img]
        press("g", "4 / 12")
        expected[img] = True
        _fits(drv)  # the page fits 1280x800: prompt, image, buttons and keys visible without scrolling
        im = drv.find_element(By.CSS_SELECTOR, "#images img")
        assert im.size["width"] >= 256 and im.value_of_css_property("image-rendering") == "pixelated"
        assert drv.execute_script("return document.querySelector('#images img').naturalWidth") == 32
        shot = tmp_path / "label.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
        if os.environ.get("AUTOFEEDBACK_UPDATE_SCREENSHOTS"):  # refresh the docs' picture
            (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, REPO / "docs" / "img" / "label-pointwise.png")
    got = {r["image_ids"][0]: r["label"] for r in rows(run_dir, "carol")}
    assert got == expected
    assert {r["annotator"] for r in rows(run_dir)} == {"carol"}


def test_browser_pairwise_keys(run_dir, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv = browser
    with serve(run_dir, mode="pairwise") as s:
        drv.get(s.url + "?annotator=dana")
        wait = WebDriverWait(drv, 10)
        body = drv.find_element(By.TAG_NAME, "body")

        def pair():
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images img")) == 2)
            return [e.get_attribute("data-image-id") for e in drv.find_elements(By.CSS_SELECTOR, "#images img")]

        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("0 / 12"))
        expected = {}
        for n, (key, pick) in enumerate([("a", 0), ("b", 1), ("t", None)], start=1):
            ids = pair()
            body.send_keys(key)
            wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith(f"{n} / 12"))
            expected[tuple(ids)] = "tie" if pick is None else ids[pick]
        assert "T" in drv.find_element(By.ID, "keys").text
        _fits(drv)
        shot = tmp_path / "label-pairwise.png"
        drv.save_screenshot(str(shot))
        if os.environ.get("AUTOFEEDBACK_UPDATE_SCREENSHOTS"):
            shutil.copy(shot, REPO / "docs" / "img" / "label.png")
    got = {tuple(r["image_ids"]): r["choice"] for r in rows(run_dir, "dana")}
    assert got == expected


def test_many_labels_compact_and_keep_final_answers(run_dir):
    with serve(run_dir) as s:
        keys = list(s.store.order)
        final = {}
        for i in range(40):  # every item relabeled: the shards are merged as answers arrive
            key = keys[i % len(keys)]
            post(s.url, "/api/label", "eve", item_id=key, label=bool(i % 3))
            final[s.store.items[key]["image_ids"][0]] = bool(i % 3)
    assert len(shard_listing(run_dir)) == 1
    assert {r["image_ids"][0]: r["label"] for r in rows(run_dir, "eve")} == final
    import pandas as pd  # a plain reader sees one row per item: the final answer

    df = pd.read_parquet(tables.table_path(run_dir, "human_labels"))
    assert len(df) == 12 and dict(zip(df["image_ids"].str[0], df["label"])) == final


def test_undone_labels_are_no_answer_for_readers(run_dir, monkeypatch):
    """Tombstones (undo) supersede the label for every reader: column-subset reads, `pairs`, the live view."""
    from autofeedback import pairs
    from autofeedback.config import PairsConfig

    monkeypatch.setattr(label_server.Store, "compact_every", 1000)  # keep one shard per answer
    with serve(run_dir, mode="pairwise") as s:
        keys = list(s.store.order)
        for i, key in enumerate(keys):
            post(s.url, "/api/label", "h", item_id=key, choice=["A", "B", "tie"][i % 3])
        undone = {post(s.url, "/api/undo", "h")["undone"] for _ in range(2)}
    assert undone == set(keys[-2:])
    path = tables.table_path(run_dir, "human_labels")
    for _ in range(3):  # the newest row per key wins whatever the shard order, also when created_at isn't read
        t = tables.read(path, "human_labels", columns=["choice"])
        assert t.column_names == ["label_id", "choice"] and t.column("choice").null_count == 2
    assert len(rows(run_dir, "h")) == 10
    summary = pairs.run(PairsConfig(run_dir=run_dir, source="human_labels", augment=0))
    assert summary["rows"] == 10


# ============================================================================================ Label Studio
@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
def test_label_studio_export_import_round_trip(run_dir, tmp_path, mode):
    cfg = LabelConfig(run_dir=run_dir, mode=mode)
    with serve(run_dir, mode=mode) as s:
        first = nxt(s.url, "alice")
        post(s.url, "/api/label", "alice", item_id=first["item_id"],
             **({"label": "good"} if mode == "pointwise" else {"choice": "B"}))
    out = tmp_path / "ls" / "tasks.json"
    summary = label_studio.export_label_studio(cfg, out)
    assert summary["tasks"] == 12 and summary["annotations"] == 1
    assert "<Choices" in out.with_suffix(".xml").read_text()
    tasks = json.loads(out.read_text())
    img_key = "image" if mode == "pointwise" else "image_a"
    assert all(t["data"][img_key].startswith("data:image/png;base64,") for t in tasks)
    ann = [t for t in tasks if t["annotations"]][0]
    assert ann["data"]["item_id"] == first["item_id"]
    assert ann["annotations"][0]["completed_by"] == {"email": "alice"}
    # exported and imported unchanged: nothing new
    assert label_studio.import_label_studio(cfg, out)["written"] == 0
    # what Label Studio gives back: another user's answers (user id 7), one cancelled (skipped) task
    value = "bad" if mode == "pointwise" else "A"
    for t in tasks[:3]:
        t["annotations"].append({"completed_by": 7, "was_cancelled": False,
                                 "result": [{"from_name": "verdict", "to_name": img_key, "type": "choices",
                                             "value": {"choices": [value]}}]})
    tasks[3]["annotations"].append({"completed_by": 7, "was_cancelled": True, "result": []})
    out.write_text(json.dumps(tasks))
    s = label_studio.import_label_studio(cfg, out)
    assert (s["written"], s["cancelled"]) == (3, 1)
    got = rows(run_dir, "labelstudio-user-7")
    assert len(got) == 3
    for r, t in zip(sorted(got, key=lambda r: r["image_ids"]), sorted(tasks[:3], key=lambda t: t["data"]["image_ids"])):
        assert r["image_ids"] == t["data"]["image_ids"] and r["prompt_id"] == t["data"]["prompt_id"]
        assert (r["label"] is False) if mode == "pointwise" else (r["choice"] == t["data"]["image_ids"][0])
    # a task of another run is an error that names it, and nothing is written
    tasks[0]["data"]["item_id"] = "elsewhere"
    tasks[0]["data"]["image_ids"] = ["x", "y"]
    out.write_text(json.dumps(tasks))
    before = shard_listing(run_dir)
    with pytest.raises(Exception, match="task 1: item 'elsewhere'"):
        label_studio.import_label_studio(cfg, out)
    assert shard_listing(run_dir) == before
