"""The search service on a real uvicorn server on loopback: its answers, its refusals (4xx with a
JSON message), paths that never leave the index, a real headless Chromium typing a query, and
the README's demo (tbps export + index + search + serve) from a trained run."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_export_eval import TINY  # the tiny run the export tests train

from gallery import tiny_model, write_gallery
from tbps.cli import main
from tbps.inference import GalleryIndex, Retriever, build_index
from tbps.inference.service import MAX_BODY_BYTES, create_app

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """``app`` served by uvicorn in a thread on a free loopback port; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def request(port, method, path, body=None, headers=None):
    """One raw HTTP request (http.client sends the path as given: no dot-segment cleanup)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("content-type", ""), data


def post(port, payload, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    status, kind, data = request(
        port, "POST", "/search", body, {"Content-Type": "application/json"}
    )
    return status, json.loads(data) if "json" in kind else data


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    model = tiny_model()
    write_gallery(tmp / "imgs", 12)
    (tmp / "secret.txt").write_text("never served")
    build_index(model, tmp / "imgs", tmp / "index", progress=False, num_workers=0, device="cpu")
    return tmp, Retriever(model, GalleryIndex.load(tmp / "index"), device="cpu")


@pytest.fixture(scope="module")
def port(gallery):
    with running(create_app(gallery[1], max_k=20)) as port:
        yield port


def test_health_search_and_images(gallery, port):
    tmp, retriever = gallery
    status, _, data = request(port, "GET", "/health")
    assert status == 200 and json.loads(data) == {"status": "ok", "images": 12}
    status, answer = post(port, {"query": "a person in a red shirt", "k": 5})
    assert status == 200
    results = answer["results"]
    expected = retriever.search("a person in a red shirt", 5)
    assert [r["path"] for r in results] == [h.path for h in expected]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(abs(r["score"] - h.score) < 1e-5 for r, h in zip(results, expected))
    status, kind, image = request(port, "GET", results[0]["url"])
    assert status == 200 and kind == "image/jpeg"
    assert image == (tmp / "imgs" / results[0]["path"]).read_bytes()
    status, answer = post(port, {"image_id": 4, "k": 3})  # "same person?" on the page
    assert status == 200 and answer["results"][0]["id"] == 4
    status, answer = post(port, {"query": "anyone", "k": 20})  # k above the gallery: all of it
    assert status == 200 and len(answer["results"]) == 12


@pytest.mark.parametrize(
    "payload,raw,status,message",
    [
        (None, b"{not json", 400, "the body must be JSON"),
        (None, b"\xff\xfe", 400, "the body must be JSON"),
        ([1, 2], None, 422, "JSON object"),
        ({"k": 5}, None, 422, 'exactly one of "query"'),
        ({"query": "", "k": 5}, None, 422, "non-empty string"),
        ({"query": "   ", "k": 5}, None, 422, "non-empty string"),
        ({"query": 7, "k": 5}, None, 422, "non-empty string"),
        ({"query": "a man", "k": 0}, None, 422, "1..20"),
        ({"query": "a man", "k": -3}, None, 422, "1..20"),
        ({"query": "a man", "k": 21}, None, 422, "1..20"),
        ({"query": "a man", "k": "5"}, None, 422, "integer"),
        ({"query": "a man", "k": True}, None, 422, "integer"),
        ({"query": "a man", "k": 5, "top": 1}, None, 422, "unknown field(s) top"),
        ({"image_id": 99, "k": 5}, None, 422, "image id in 0..11"),
        ({"query": "x" * 1001}, None, 422, "at most 1000"),
        (None, b'{"query": "' + b"a" * MAX_BODY_BYTES + b'"}', 413, "at most"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_json_message(port, payload, raw, status, message):
    got, answer = post(port, payload, raw)
    assert got == status and message in answer["error"]


def test_chunked_body_over_the_limit_is_refused(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (b"x" * 4096 for _ in range(8))  # no Content-Length: streamed, counted
    conn.request("POST", "/search", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "over" in json.loads(response.read())["error"]
    conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/images/12",
        "/images/-1",
        "/images/1.0",
        "/images/abc",
        "/images/..",
        "/images/%2e%2e",
        "/images/../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/%2e%2e%2fsecret.txt",
        "/images/..%2f..%2fetc%2fpasswd",
        "/images//etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/images/0/../../secret.txt",
        "/secret.txt",
        "/../secret.txt",
        "/images/",
        "/images/%D9%A3",  # a non-ASCII digit (Arabic-Indic three)
    ],
)
def test_paths_never_leave_the_index(port, path):
    status, kind, data = request(port, "GET", path)
    assert status == 404 and "json" in kind and b"never served" not in data
    assert "error" in json.loads(data)


def test_wrong_method_is_a_json_405(port):
    status, kind, data = request(port, "GET", "/search")
    assert status == 405 and "not allowed" in json.loads(data)["error"]


def _chromium() -> str | None:
    for name in (os.environ.get("TBPS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_web_page_in_a_headless_browser(gallery, port):
    playwright = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium (apt-get install chromium, or set TBPS_CHROMIUM)")
    _, retriever = gallery
    requests = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('count').textContent.includes('12')")
        assert page.eval_on_selector_all("#k option", "os => os.map(o => o.value)") == ["10", "20"]
        page.fill("#query", "a person in a blue shirt and green pants")
        page.select_option("#k", "10")
        page.press("#query", "Enter")
        page.wait_for_selector(".result >> nth=9")
        cards = page.query_selector_all(".result")
        ranks = [int(c.get_attribute("data-rank")) for c in cards]
        scores = [float(c.get_attribute("data-score")) for c in cards]
        assert ranks == list(range(1, 11)) and scores == sorted(scores, reverse=True)
        expected = retriever.search("a person in a blue shirt and green pants", 10)
        shown = [c.query_selector(".path").inner_text() for c in cards]
        assert shown == [h.path for h in expected]
        page.wait_for_function(
            "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert "10 results" in page.inner_text("#status")
        link = cards[0].query_selector("a.open")
        assert (
            link.get_attribute("target") == "_blank"
            and link.get_attribute("href") == f"/images/{expected[0].id}"
        )
        cards[3].query_selector("button").click()  # "same person?": image-to-image
        page.wait_for_function("document.querySelector('.result').dataset.score > 0.99")
        assert "images like" in page.inner_text("#status")
        page.fill("#query", "   ")
        page.press("#query", "Enter")
        assert "type a description" in page.inner_text("#status")
        browser.close()
    assert all(url.startswith(f"http://127.0.0.1:{port}/") for url in requests)  # nothing off-box


def test_readme_demo_export_index_search_serve(tmp_path, capsys):
    torch.manual_seed(0)
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", *TINY, f"run_dir={run}", f"cache_dir={cache}"]) == 0
    model = tmp_path / "model"
    assert main(["export", f"ckpt_path={run}/checkpoints/best.ckpt", f"out={model}"]) == 0
    (test_images,) = cache.glob("synthetic/*/imgs/test")
    index = tmp_path / "gallery"
    capsys.readouterr()
    args = ["index", f"model={model}", f"images={test_images}", f"out={index}", "format=json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    count = len(list(test_images.rglob("*.jpg")))
    assert summary == {"images": count, "added": count, "changed": 0, "removed": 0, "skipped": 0}
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["added"] == 0

    query = "a man in a red jacket, black trousers (and a backpack)"  # commas and brackets
    assert main(["search", f"index={index}", f"query={query}", "k=500", "format=json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == count and [h["rank"] for h in hits] == list(range(1, count + 1))
    assert set(hits[0]) == {"rank", "path", "score"} and (test_images / hits[0]["path"]).is_file()
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    first = hits[0]["path"]
    assert (
        main(["search", f"index={index}", f"image={test_images / first}", "k=1", "format=json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["path"] == first
    assert main(["search", f"index={index}", "k=3"]) == 2
    assert "exactly one of" in capsys.readouterr().err

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tbps", "serve", f"index={index}", f"port={port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                status, _, data = request(port, "GET", "/health")
                break
            except OSError:
                assert time.time() < deadline, "tbps serve did not start"
                time.sleep(0.2)
        assert status == 200 and json.loads(data) == {"status": "ok", "images": count}
        status, answer = post(port, {"query": query, "k": 3})
        assert status == 200 and [r["path"] for r in answer["results"]] == [
            h["path"] for h in hits[:3]
        ]
        status, kind, _ = request(port, "GET", "/")
        assert status == 200 and "text/html" in kind
        assert main(["serve", f"index={index}", f"port={port}"]) == 2  # the port is taken
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
