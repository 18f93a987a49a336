"""The served demo reads only what was uploaded to it: every input of ``/segment`` probed over HTTP.

A hostile client talks to the server through ``gradio_client`` or raw HTTP (gradio's ``/call`` API and
its ``/file=`` route); the server must never open a file that did not come in through an upload (or is
one of its example photos), and its refusals must not tell whether a path exists.
"""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from ovss.demo.inputs import NOT_UPLOADED
from tests.conftest import DATA_DIR, needs
from tests.demo.conftest import serve_demo

pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, server root, a secret image on the server, a checkpoint file on the server)."""
    needs(DATA_DIR)
    root = tmp_path_factory.mktemp("demo_security")
    secret = root / "secret" / "server-only.png"
    secret.parent.mkdir()
    Image.new("RGB", (40, 30), (250, 0, 0)).save(secret)
    checkpoint = root / "secret" / "model.safetensors"
    checkpoint.write_bytes(b"not a model")
    with serve_demo(root, "--examples", str(DATA_DIR)) as url:
        yield url, root, secret, checkpoint


DISPLAY_DEFAULTS = ["", 0.55, True, ""]  # /segment's last inputs: min score, opacity, names, score map


def call(url: str, data: list) -> tuple[str, object]:
    """One raw ``/gradio_api/call/segment`` request (``data``: the first six inputs; the display
    inputs at their defaults); (event name, its data) of the final event."""
    with httpx.Client(timeout=120) as http:
        posted = http.post(f"{url}gradio_api/call/segment", json={"data": [*data, *DISPLAY_DEFAULTS]})
        assert posted.status_code == 200, posted.text
        stream = http.get(f"{url}gradio_api/call/segment/{posted.json()['event_id']}").text
    events = [line for line in stream.splitlines() if line.startswith(("event:", "data:"))]
    assert len(events) >= 2, stream
    return events[-2].split(":", 1)[1].strip(), json.loads(events[-1].split(":", 1)[1])


def example_path(url: str) -> str:
    """The server path the page sends for its first example photo (from the page's config)."""
    config = httpx.get(f"{url}config", timeout=30).json()
    samples = [c["props"]["samples"] for c in config["components"] if c.get("type") == "dataset"]
    return samples[0][0][0]["path"]


def test_api_client_cannot_name_a_server_file(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _, secret, _ = served
    client = Client(url, verbose=False)
    messages = set()
    missing = secret.parent / "missing.png"
    for image in ({"path": str(secret)}, {"path": str(missing)}, {"path": "/etc/passwd"}):
        with pytest.raises(AppError) as info:
            client.predict(image=image, classes="cat; dog", api_name="/segment")
        messages.add(str(info.value))
    assert messages == {NOT_UPLOADED}  # one message: a refusal does not tell whether the path exists
    # The same file sent as an upload is served: the gate is about where a file came from.
    upload = shutil.copy(secret, tmp_path / "mine.png")
    _, _, label_png, _ = client.predict(image=handle_file(upload), classes="cat; dog", api_name="/segment")
    assert np.array(Image.open(label_png)).shape == (30, 40)


def test_raw_http_cannot_name_a_server_file(served):
    url, root, secret, _ = served
    hostile = [
        {"path": str(secret)},
        {"path": str(secret), "orig_name": "quokka.jpg", "url": f"{url}gradio_api/file={secret}"},
        {"path": f"{root}/gradio/../secret/server-only.png"},
        {"path": str(secret), "meta": {"_type": "gradio.FileData"}},  # gradio's own check refuses this one
        str(secret),
        {"path": str(secret.parent)},
    ]
    for image in hostile:
        event, data = call(url, [image, "cat; dog", "test-san-tiny", False, 8, "whole"])
        assert event == "error", (image, data)
        assert data["error"] in (NOT_UPLOADED, None), (image, data)  # None: gradio hides its own errors
        assert str(secret.parent) not in json.dumps(data)
    # gradio's file route serves no file of the server that it did not create, and answers a missing
    # file the same way.
    for path in (secret, root / "server.log", DATA_DIR / "quokka.jpg", secret.parent / "missing.png"):
        response = httpx.get(f"{url}gradio_api/file={path}", timeout=30)
        assert response.status_code == 403, path
        assert response.json() == {"detail": f"File not allowed: {path}."}
    log = (root / "server.log").read_text()
    assert log.count("request refused: it names a file that was not uploaded") >= 4


def test_examples_are_served_and_other_inputs_are_checked(served):
    url, _, _, checkpoint = served
    photo = {"path": example_path(url)}
    event, data = call(url, [photo, "quokka; grass", "test-san-tiny", False, 8, "whole"])
    assert event == "complete" and data[3]["headers"] == ["class", "% pixels", "peak score"], data
    refusals = {
        str(checkpoint): "is not offered by this server",
        str(checkpoint.parent / "missing.safetensors"): "is not offered by this server",
        "../../../etc/passwd": "is not offered by this server",
        "san-vit-b16": "are not on this server",
    }
    answers = {}
    for model, expected in refusals.items():
        event, data = call(url, [photo, "cat", model, False, 8, "whole"])
        assert event == "error" and expected in data["error"], (model, data)
        answers[model] = data["error"].replace(model, "MODEL")
    assert answers[str(checkpoint)] == answers[str(checkpoint.parent / "missing.safetensors")]
    for classes in (str(checkpoint), "/etc/passwd"):  # a class list is never read as a file
        event, data = call(url, [photo, classes, "test-san-tiny", False, 8, "whole"])
        assert event == "complete" and [row[0] for row in data[3]["data"]] == [classes], data
    event, data = call(url, [photo, ["cat"], "test-san-tiny", False, 8, "whole"])
    assert event == "error" and data["error"].startswith("the class list must be text"), data
