"""``ovss demo`` served for real: the page in a headless browser and the ``/segment`` API.

The browser is the system's Chromium (Debian's ``chromium`` package, or ``$OVSS_CHROMIUM``) driven by the
``playwright`` package (``pip install 'ovss[browser-test]'``; never ``playwright install``). Select
with ``pytest -k browser``. Set ``OVSS_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA_DIR, needs
from tests.demo.conftest import serve_demo

pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")

KEEP_FILES_S = 10  # the server deletes uploads and results this long after they were written
MAX_CLASSES = 40


def find_chromium() -> str | None:
    """The system Chromium/Chrome executable (``$OVSS_CHROMIUM`` first), or None."""
    explicit = os.environ.get("OVSS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser for the page test; skips (before any server starts) where none is found."""
    if os.environ.get("OVSS_REQUIRE_BROWSER") == "1":
        import playwright.sync_api  # noqa: F401  (CI: a missing playwright fails the test)
    pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install 'ovss[browser-test]')"
    )
    found = find_chromium()
    if found is None:
        why = "no Chromium found (apt-get install chromium, or set OVSS_CHROMIUM=/path/to/chrome)"
        if os.environ.get("OVSS_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``ovss demo --model test-san-tiny`` on a free port of 127.0.0.1; yields (url, log path, temp dir)."""
    needs(DATA_DIR)
    root = tmp_path_factory.mktemp("demo_server")
    args = ("--examples", str(DATA_DIR), "--keep-files", str(KEEP_FILES_S), "--max-classes", str(MAX_CLASSES))
    with serve_demo(root, *args, "--max-upload-mb", "1") as url:
        yield url, root / "server.log", root / "gradio"


def disjoint(a: dict, b: dict) -> bool:
    """Whether two bounding boxes (x, y, width, height) do not overlap."""
    return (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def assert_clean_log(log: Path) -> None:
    """User errors are one line each in the server log, never a traceback."""
    text = log.read_text()
    assert "Traceback" not in text, text


def test_demo_api_client_and_upload_cleanup(server, tmp_path):
    pytest.importorskip("gradio_client", reason="gradio_client not installed (pip install 'ovss[demo]')")
    from gradio_client import Client, handle_file

    url, log, cache = server
    photo = tmp_path / "upload-check.jpg"
    shutil.copy(DATA_DIR / "quokka.jpg", photo)
    client = Client(url, verbose=False)
    overlay, legend, label_png, table = client.predict(
        image=handle_file(str(photo)), classes="quokka; grass; rock, stone; sky", api_name="/segment"
    )
    width, height = Image.open(photo).size
    label = np.array(Image.open(label_png))
    assert label.shape == (height, width) and set(np.unique(label)) <= {0, 1, 2, 3}
    assert Image.open(overlay).size == (width, height)
    names = [row[0] for row in table["data"]]
    assert table["headers"] == ["class", "% pixels", "peak score"] and set(names) <= {
        "quokka",
        "grass",
        "rock",
        "sky",
    }
    assert sum(row[1] for row in table["data"]) == pytest.approx(100, abs=0.05)
    for name in names:
        assert f'class="ovss-name">{name}<' in legend
    # The display inputs are optional (the call above has none); with them the outputs are the same four.
    _, legend2, label_png2, table2 = client.predict(
        image=handle_file(str(photo)),
        classes="quokka; grass; rock, stone; sky",
        min_score=1e9,  # above every score: every pixel unlabelled
        opacity=0.8,
        labels=False,
        score_class="quokka",
        api_name="/segment",
    )
    assert np.all(np.array(Image.open(label_png2)) == 255) and table2["data"] == []
    assert 'class="ovss-name">unlabelled<' in legend2
    with pytest.raises(Exception, match=r"the opacity must be a number from 0 to 1, got '2.0'"):
        client.predict(image=handle_file(str(photo)), classes="cat", opacity=2.0, api_name="/segment")
    with pytest.raises(Exception, match=r"41 classes given; this demo accepts up to 40 per request"):
        client.predict(
            image=handle_file(str(photo)), classes=";".join(f"c{i}" for i in range(41)), api_name="/segment"
        )
    with pytest.raises(Exception, match=r"the weights of san-vit-b16 are not on this server"):
        client.predict(image=handle_file(str(photo)), classes="cat", model="san-vit-b16", api_name="/segment")
    # An upload over --max-upload-mb is refused by the server itself and not kept.
    import httpx

    too_big = {"files": ("too-big.jpg", b"\xff" * (2**20 + 1), "image/jpeg")}
    response = httpx.post(f"{url}gradio_api/upload", files=too_big, timeout=60)
    assert response.status_code == 413 and "maximum allowed size of 1048576 bytes" in response.text
    assert not list(cache.rglob("too-big*"))
    # Uploads and results leave the server's cache after --keep-files seconds (examples stay).
    uploaded = list(cache.rglob("upload-check*"))
    assert uploaded, "the upload was not found in the server's cache"
    deadline = time.monotonic() + KEEP_FILES_S + 30
    while any(p.exists() for p in uploaded) and time.monotonic() < deadline:
        time.sleep(1)
    assert not any(p.exists() for p in uploaded), f"still on the server: {uploaded}"
    assert list(cache.rglob("quokka.jpg")), "the example photo was deleted"
    assert_clean_log(log)


def check_display_controls(page, shots: Path) -> None:
    """Minimum score, opacity, names on regions and the score map of one class, at both widths."""
    assert not page.is_visible("#ovss-score-map")  # no class chosen yet: no score map
    assert page.input_value("#ovss-min-score textarea") == ""  # off: every pixel labelled
    for width in (420, 1400):  # every control fits the screen, on a phone too
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)
        for control in ("#ovss-min-score", "#ovss-opacity", "#ovss-labels", "#ovss-score-class"):
            box = page.locator(control).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (width, control, box)
    page.click("#ovss-score-class input")
    page.get_by_role("option", name="quokka").click()  # the choices follow the class box
    page.click("#ovss-segment")
    page.wait_for_selector("#ovss-score-map img", state="visible")
    page.screenshot(path=str(shots / "demo_display.png"), full_page=True)
    assert not page.is_visible("#ovss-legend tr.ovss-unlabelled")
    page.fill("#ovss-min-score textarea", "1000000000")
    page.fill("#ovss-opacity input[type=number]", "0.8")
    page.click("#ovss-labels input")
    page.click("#ovss-segment")
    page.wait_for_selector("#ovss-score-map img", state="visible")
    page.wait_for_selector("#ovss-legend tr.ovss-unlabelled")
    assert page.inner_text("#ovss-legend tr.ovss-unlabelled .ovss-pct") == "100.0 %"
    for width in (420, 1400):  # the score map fits a phone's width too
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)
        box = page.locator("#ovss-score-map img").bounding_box()
        assert box["width"] > 100 and box["x"] + box["width"] <= width + 1, (width, box)
    page.screenshot(path=str(shots / "demo_unlabelled.png"), full_page=True)
    page.fill("#ovss-min-score textarea", "")  # back to labelling every pixel
    page.click("#ovss-labels input")


def test_demo_in_browser(chromium, server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, log, _ = server
    shots = Path(os.environ.get("OVSS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            requested: list[str] = []  # the page must load nothing from outside the server
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            page.wait_for_selector("#ovss-segment")
            assert page.title() == "ovss: open-vocabulary segmentation"
            assert "test-san-tiny (built in, random weights)" in page.input_value("#ovss-model input")
            assert not page.is_visible("#ovss-sed-fast")  # a SAN model: no SED option

            # Upload, type classes, segment.
            page.set_input_files("#ovss-image input[type=file]", str(DATA_DIR / "quokka.jpg"))
            page.wait_for_selector("#ovss-image img")
            page.fill("#ovss-classes textarea", "quokka; grass; rock, stone; sky")
            page.click("#ovss-segment")
            page.wait_for_selector("#ovss-legend table")
            page.wait_for_selector("#ovss-label-file a")
            page.screenshot(path=str(shots / "demo_result.png"), full_page=True)

            rows = page.locator("#ovss-legend tbody tr")
            legend = {
                rows.nth(i).locator(".ovss-name").inner_text(): rows.nth(i).locator(".ovss-pct").inner_text()
                for i in range(rows.count())
            }
            assert legend and set(legend) <= {"quokka", "grass", "rock", "sky"}
            assert all(re.fullmatch(r"\d+\.\d %|<0\.1 %", v) and v != "0.0 %" for v in legend.values())
            swatch = rows.nth(0).locator(".ovss-swatch")
            assert swatch.bounding_box()["width"] >= 10  # readable whatever the image size
            for width in (420, 1400):  # a phone puts the legend below the image, a desktop beside it
                page.set_viewport_size({"width": width, "height": 1000})
                page.wait_for_timeout(300)
                image_box = page.locator("#ovss-overlay img").bounding_box()
                legend_box = page.locator("#ovss-legend table").bounding_box()
                assert disjoint(image_box, legend_box) and legend_box["width"] >= 150, (width, legend_box)
                beside = legend_box["x"] >= image_box["x"] + image_box["width"]
                assert beside == (width == 1400), (width, image_box, legend_box)
            table = page.inner_text("#ovss-table")
            assert all(name in table for name in legend)
            check_display_controls(page, shots)

            # The full-size label map can be downloaded.
            link = page.locator("#ovss-label-file a").first
            assert page.get_attribute("#ovss-label-file td.filename", "aria-label") == "quokka_label.png"
            body = page.request.get(link.get_attribute("href")).body()
            label = Image.open(io.BytesIO(body))
            assert label.mode == "P" and label.size == Image.open(DATA_DIR / "quokka.jpg").size

            # A user error is a toast with the message, not gradio's generic error.
            page.fill("#ovss-classes textarea", "  ")
            page.click("#ovss-segment")
            toast = page.wait_for_selector(".toast-body")
            assert "no classes: type class names separated by ';'" in toast.inner_text()
            page.screenshot(path=str(shots / "demo_error.png"), full_page=True)
            not_an_image = tmp_path / "notes.png"
            not_an_image.write_text("a text file, not an image")
            page.set_input_files("#ovss-image input[type=file]", str(not_an_image))
            page.fill("#ovss-classes textarea", "cat")
            page.click("#ovss-segment")
            toast = page.wait_for_selector(".toast-body:has-text('not an image')")
            assert "the upload is not an image this demo can read; use a JPEG" in toast.inner_text()

            # Per-model options follow the model; examples fill the form.
            page.click("#ovss-model input")
            page.get_by_role("option", name="test-sed-tiny (built in, random weights)").click()
            page.wait_for_selector("#ovss-sed-fast", state="visible")
            assert not page.is_visible("#ovss-sed-topk")
            page.click("#ovss-sed-fast input")
            page.wait_for_selector("#ovss-sed-topk", state="visible")
            page.click("#ovss-model input")
            page.get_by_role("option", name="test-san-tiny (built in, random weights)").click()
            page.wait_for_selector("#ovss-sed-fast", state="hidden")
            page.get_by_text("person; bottle; chair").nth(2).click()  # the third VOC photo: the bus
            page.wait_for_function(
                "document.querySelector('#ovss-classes textarea').value.startsWith('person; bottle; chair')"
            )
            page.wait_for_function("document.querySelector('#ovss-image img')?.src?.includes('2011_000025')")
            page.click("#ovss-segment")  # an example segments like an upload
            page.wait_for_selector("#ovss-legend table")
            page.wait_for_function(
                "document.querySelector('#ovss-label-file td.filename')?.getAttribute('aria-label')"
                " === '2011_000025_label.png'"
            )
            page.screenshot(path=str(shots / "demo_example.png"), full_page=True)
            outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
            assert len(requested) > 10 and outside == []
        finally:
            browser.close()
    assert_clean_log(log)
    assert "request refused: no classes" in log.read_text()
