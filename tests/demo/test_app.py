"""The demo page (demo/app.py): port check, example photos, widgets per model, upload folder, sessions."""

from __future__ import annotations

import os
import socket

import pytest

from ovss.cli.main import main
from ovss.demo.app import check_port, default_examples_dir, find_examples
from ovss.demo.backend import DemoBackend
from ovss.demo.inputs import DemoLimits
from ovss.errors import OvssError


def test_check_port(busy_port):
    with pytest.raises(OvssError, match=r"^cannot serve on 127.0.0.1:\d+: Address already in use"):
        check_port("127.0.0.1", busy_port)
    with pytest.raises(OvssError, match=r"^--port must be between 1 and 65535, got 70000$"):
        check_port("127.0.0.1", 70000)
    with pytest.raises(OvssError, match=r"^cannot resolve --host 'no such host\.invalid'"):
        check_port("no such host.invalid", 7860)
    with socket.socket() as s:  # a free port passes
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    check_port("127.0.0.1", free)


def test_examples_folder(tmp_path, capsys, no_model_load):
    (tmp_path / "sub").mkdir()
    for name in ("quokka.jpg", "sub/b.JPEG", "sub/b.png", "notes.txt", "sub/deep/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    rows = find_examples(tmp_path)
    assert [r[0] for r in rows] == [str(tmp_path / "quokka.jpg"), str(tmp_path / "sub" / "b.JPEG")]
    assert rows[0][1].startswith("quokka;") and "person" in rows[1][1]
    assert find_examples(None) == [] and find_examples(tmp_path / "missing") == []
    found = default_examples_dir()
    assert found is None or (found / "quokka.jpg").is_file()
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    assert main(["demo", "--model", "test-san-tiny", "--examples", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == (
        f"ovss: error: --examples {tmp_path / 'x'}: no such folder; pass a folder of photos, or 'none'\n"
    )


@pytest.mark.parametrize(
    ("model", "value", "choices"),
    [
        ("test-catseg-tiny", "whole", ["whole", "slide"]),
        ("test-catseg-v1-tiny.mmseg", "mmseg", ["mmseg", "whole"]),
        ("test-san-tiny", "d2", ["d2", "mmseg"]),
    ],
)
def test_app_shows_the_catseg_inference_modes_of_the_startup_model(model, value, choices):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    from ovss.demo.app import build_app

    app = build_app(DemoBackend(model))  # the page is built from the catalogue: no model is loaded
    props = [c["props"] for c in app.get_config_file()["components"] if "props" in c]
    radio = next(p for p in props if p.get("label") == "inference protocol (SAN, CAT-Seg)")
    assert radio["visible"] is True and radio["value"] == value
    assert [v for _, v in radio["choices"]] == choices


def test_app_offers_only_usable_models_and_cleans_its_files(data_dir):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    from ovss.demo.app import build_app

    backend = DemoBackend("test-sed-tiny", limits=DemoLimits(keep_files_s=600, queue_size=3))
    backend.segmenter()
    app = build_app(backend, find_examples(data_dir))
    config = app.get_config_file()
    by_label = {c["props"].get("label"): c["props"] for c in config["components"] if "props" in c}
    choices = [value for _, value in by_label["model"]["choices"]]
    assert choices[0] == "test-sed-tiny" and "san-vit-b16" not in choices and "test-san-tiny" in choices
    assert by_label["SED fast mode (category early rejection)"]["visible"] is True
    assert by_label["inference protocol (SAN, CAT-Seg)"]["visible"] is False
    assert app.delete_cache == (150, 600)
    assert app._queue.max_size == 3
    endpoint = [fn for fn in app.fns.values() if fn.api_name == "segment"]
    assert len(endpoint) == 1 and endpoint[0].concurrency_limit == 1 and not endpoint[0].preprocess


def test_the_server_gets_a_private_upload_folder(monkeypatch, tmp_path):
    """gradio serves any file of its upload folder by name: the demo's is its own, not /tmp/gradio."""
    from ovss.demo.app import private_upload_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    folder = private_upload_dir()
    assert folder is not None and folder.parent == tmp_path and folder.name.startswith("ovss-demo-uploads-")
    assert os.environ["GRADIO_TEMP_DIR"] == str(folder) and (folder.stat().st_mode & 0o777) == 0o700
    assert private_upload_dir() is None  # a folder the user chose is kept


def test_the_page_passes_each_browser_session_to_the_backend(data_dir):
    """gradio hands the request to /segment: each API client (browser session) gets its own re-query
    features, so one user's image never speeds up another's request."""
    pytest.importorskip("gradio_client", reason="gradio_client not installed (pip install 'ovss[demo]')")
    from gradio_client import Client, handle_file

    from ovss.demo.app import build_app

    backend = DemoBackend("test-san-tiny")
    backend.segmenter()
    app = build_app(backend, [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        photo = handle_file(str(data_dir / "quokka.jpg"))
        first, second = (Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2))
        first.predict(image=photo, classes="quokka; grass", api_name="/segment")
        first.predict(image=photo, classes="quokka; grass; sky", api_name="/segment")
        assert len(backend._features) == 1
        second.predict(image=photo, classes="quokka", api_name="/segment")
        assert len(backend._features) == 2 and all(session for session, in backend._features)
    finally:
        app.close()
        backend.close()
