"""The demo's logic without gradio or a browser: outputs, errors, the backend (inputs and limits:
test_inputs.py; the catalogue: test_catalogue.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.api.palettes import class_colours
from ovss.api.visualize import palette
from ovss.data.io import read_label
from ovss.demo import backend as demo
from ovss.demo.backend import DemoBackend, DemoUserError
from ovss.demo.inputs import NOT_UPLOADED, DemoLimits, UploadGate
from ovss.errors import OvssError, VocabularyError
from tests.conftest import DATA_DIR


def photos_gate(data_dir: Path) -> UploadGate:
    """A gate admitting the sample photos as if they were the page's examples."""
    return UploadGate(examples=sorted(data_dir.rglob("*.jpg")))


# ----------------------------------------------------------------------------------------- outputs
def test_legend_html_sorted_escaped_without_empty_classes():
    names = ["sky", "<b>cat</b>", "absent", "speck"]
    fractions = np.array([0.2996, 0.7, 0.0, 0.0004])
    html = demo.legend_html(names, fractions, palette(4))
    assert "absent" not in html and ">0.0 %" not in html
    assert "<b>cat</b>" not in html and "&lt;b&gt;cat&lt;/b&gt;" in html
    assert html.index("cat") < html.index("sky") < html.index("speck")  # largest first
    assert "70.0 %" in html and "30.0 %" in html and "&lt;0.1 %" in html
    r, g, b = palette(4)[1]
    assert f"rgb({r}, {g}, {b})" in html
    assert "no class covers any pixel" in demo.legend_html(["a"], np.zeros(1), palette(1))


def test_display_overlay_is_bounded_and_keeps_colours():
    h, w = 1000, 3000
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, w // 2 :] = 1
    image = np.zeros((h, w, 3), dtype=np.uint8)
    out = demo.display_overlay(image, labels, ["a", "b"])
    assert out.size == (demo.DISPLAY_SIDE, round(h * demo.DISPLAY_SIDE / w))
    pixels = np.asarray(out)
    colours = class_colours(["a", "b"]).astype(np.float64) * 0.55  # colours are per class name
    assert np.abs(pixels[10, 10] - colours[0]).max() <= 1 and np.abs(pixels[10, -10] - colours[1]).max() <= 1
    small = demo.display_overlay(image[:10, :20], labels[:10, :20], ["a", "b"])
    assert small.size == (20, 10)


def test_result_files_round_trip_and_keep_only_the_newest():
    files = demo.ResultFiles(keep=2)
    label = np.arange(12, dtype=np.int64).reshape(3, 4) % 3
    paths = [files.write_label_map(label, f"photo {i}/..", 3) for i in range(3)]
    assert np.array_equal(read_label(paths[-1]), label)
    assert paths[-1].name == "photo_2____label.png" and paths[-1].parent.parent == files.dir
    assert Image.open(paths[-1]).mode == "P" and Image.open(paths[-1]).getpalette()[:9] == list(
        palette(3).ravel()
    )
    assert [p.exists() for p in paths] == [False, True, True]
    files.close()
    assert not files.dir.exists()


def test_segment_passes_the_catseg_v1_inference_mode(data_dir, monkeypatch):
    backend = DemoBackend("test-catseg-v1-tiny.mmseg", gate=photos_gate(data_dir))
    seen = []
    real_encode = type(backend.segmenter()).encode_image

    def spy(self, image, tta=None, **options):  # the model options go to the image stage
        seen.append(options)
        return real_encode(self, image, tta, **options)

    monkeypatch.setattr(type(backend.segmenter()), "encode_image", spy)
    photo = {"path": str(data_dir / "quokka.jpg")}
    assert backend.segment(photo, "quokka; grass").table
    backend.segment(photo, "quokka; grass", inference="whole")
    assert seen == [{"inference": "mmseg"}, {"inference": "whole"}]
    with pytest.raises(DemoUserError, match=r"^inference 'slide' is not offered for this model"):
        backend.segment(photo, "quokka; grass", inference="slide")
    backend.close()


def test_web_message_drops_fixes_meant_for_a_terminal():
    assert demo.web_message(OvssError("image too big; raise it with --max-pixels N")) == "image too big"
    assert demo.web_message(OvssError("x is corrupt; run 'ovss download x'")) == "x is corrupt"
    assert demo.web_message(OvssError("plain; keep the fix")) == "plain; keep the fix"


# ----------------------------------------------------------------------------------------- backend
@pytest.fixture(scope="module")
def backend():
    b = DemoBackend("test-san-tiny", limits=DemoLimits(max_classes=10), gate=photos_gate(DATA_DIR))
    b.segmenter()
    yield b
    b.close()


def test_segment_outputs_match_the_model(backend, data_dir):
    photo = str(data_dir / "quokka.jpg")
    out = backend.segment({"path": photo, "orig_name": "quokka.jpg"}, "quokka; grass; rock, stone; sky")
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    reference = backend.segmenter().predict(rgb, [["quokka"], ["grass"], ["rock", "stone"], ["sky"]])
    label = read_label(out.label_file)
    assert out.label_file.name == "quokka_label.png" and np.array_equal(label, reference.label_map)
    assert out.overlay.size == (rgb.shape[1], rgb.shape[0])
    assert [row[0] for row in out.table] == [name for name, _ in reference.present()]
    assert sum(row[1] for row in out.table) == pytest.approx(100, abs=0.05)
    for name, _ in reference.present():
        assert f'class="ovss-name">{name}<' in out.legend


def test_segment_refuses_bad_requests_with_page_messages(backend, data_dir):
    photo = {"path": str(data_dir / "quokka.jpg")}
    with pytest.raises(DemoUserError, match=r"^no image"):
        backend.segment(None, "cat")
    with pytest.raises(DemoUserError, match=r"^no classes"):
        backend.segment(photo, " ; ")
    with pytest.raises(DemoUserError, match=r"^11 classes given; this demo accepts up to 10"):
        backend.segment(photo, ";".join("abcdefghijk"))
    # What an API client can send instead of the page's values.
    with pytest.raises(DemoUserError, match=r"^the class list must be text"):
        backend.segment(photo, ["cat"])
    with pytest.raises(DemoUserError, match=r"^the model must be a name, got list$"):
        backend.segment(photo, "cat", model=["x"])
    with pytest.raises(DemoUserError, match=r"^no image"):
        backend.segment({"path": 3}, "cat")


def test_segment_never_downloads_and_hides_server_details(backend, data_dir, monkeypatch, tmp_path, caplog):
    from ovss.weights import resolve
    from ovss.weights.resolve import converted_path

    def no_network(*args, **kwargs):
        raise AssertionError("a web request tried to download weights")

    monkeypatch.setattr(resolve, "fetch_source", no_network)
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    photo = {"path": str(data_dir / "quokka.jpg")}
    with pytest.raises(DemoUserError, match=r"^the weights of san-vit-b16 are not on this server, so it"):
        backend.segment(photo, "cat", model="san-vit-b16")
    with pytest.raises(
        DemoUserError, match=r"^model 'x; rm' is not offered by this server; choose one of: test-san"
    ):
        backend.segment(photo, "cat", model="x; rm")
    converted_path("san-vit-b16").parent.mkdir(parents=True)
    converted_path("san-vit-b16").write_bytes(b"corrupt")  # listed as on disk, but it does not load
    with caplog.at_level(logging.WARNING, logger="ovss.demo"), pytest.raises(DemoUserError) as info:
        backend.segment(photo, "cat", model="san-vit-b16")
    assert str(info.value) == (
        "the model san-vit-b16 could not be loaded on this server (the reason is in the server log); "
        "choose another model"
    )
    assert str(tmp_path) in caplog.text  # the operator gets the full reason
    assert backend.segment(photo, "cat; grass").table  # the server still works afterwards


def test_segment_switches_family_and_applies_its_options(backend, data_dir, monkeypatch):
    photo = {"path": str(data_dir / "voc" / "2011_000025.jpg")}
    seen = {}
    out = backend.segment(photo, "bus; car; road", model="test-sed-tiny", fast=True, topk=2)
    assert backend.model_name == "test-sed-tiny" and backend.family("test-sed-tiny") == "sed" and out.table
    real_encode = type(backend.segmenter()).encode_image

    def spy(self, image, tta=None, **options):  # the model options go to the image stage
        seen.update(options)
        return real_encode(self, image, tta, **options)

    monkeypatch.setattr(type(backend.segmenter()), "encode_image", spy)
    backend.segment(photo, "bus; car", model="test-sed-tiny", fast=True, topk=2, inference="whole")
    assert seen == {"fast": True, "topk": 2}  # the CAT-Seg option is not passed to SED
    seen.clear()
    backend.segment(photo, "bus; car", model="test-san-tiny", fast=True, topk=2)
    assert seen == {"inference": "d2"} and backend.model_name == "test-san-tiny"  # SAN: its own protocol
    seen.clear()
    backend.segment(photo, "bus; car", model="test-san-tiny", inference="mmseg")
    assert seen == {"inference": "mmseg"}


def test_vocabulary_errors_from_the_model_become_page_messages(backend, data_dir, monkeypatch):
    def refuse(self, image, classes=None, **options):
        raise VocabularyError("duplicate class 'cat'; remove it from --classes")

    monkeypatch.setattr(type(backend.segmenter()), "predict", refuse)
    with pytest.raises(DemoUserError, match=r"^the class list is not valid: duplicate class 'cat'$"):
        backend.segment({"path": str(data_dir / "quokka.jpg")}, "cat; Cat")


# ------------------------------------------------------------------------------------ upload gate


def test_segment_refuses_server_files_without_telling_whether_they_exist(data_dir, tmp_path, caplog):
    """The demo's one API endpoint names its image by a server path: only uploads and examples pass."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(secret)
    backend = DemoBackend("test-san-tiny", gate=UploadGate(examples=[data_dir / "quokka.jpg"]))
    calls = []
    backend.segmenter = lambda model=None: calls.append(model)  # the model must never be reached
    caplog.set_level(logging.INFO, logger="ovss.demo")
    messages = set()
    for image in (
        {"path": str(secret)},
        str(secret),
        {"path": str(tmp_path / "missing.png")},
        {"path": str(data_dir / ".." / "data" / "voc")},
        {"path": "/etc/passwd", "url": "http://127.0.0.1/quokka.jpg", "orig_name": "quokka.jpg"},
    ):
        with pytest.raises(DemoUserError) as info:
            backend.segment(image, "cat; dog")
        messages.add(str(info.value))
    assert messages == {NOT_UPLOADED} and calls == []
    assert str(tmp_path) not in caplog.text and "passwd" not in caplog.text


def _count_image_stage(backend: DemoBackend, monkeypatch: pytest.MonkeyPatch) -> tuple[object, list[int]]:
    """(the backend's loaded segmenter, the list that grows by one per run of its model's image stage)."""
    seg = backend.segmenter()
    calls: list[int] = []
    real_stage = seg.model.image_stage
    monkeypatch.setattr(seg.model, "image_stage", lambda *a, **k: (calls.append(1), real_stage(*a, **k))[1])
    return seg, calls


def test_changing_only_the_classes_reuses_the_image_features(data_dir, monkeypatch):
    """Within one browser session a request that changes only the classes (or display controls) runs
    only the text stage; another session never gets them (no timing hint about others' images)."""
    backend = DemoBackend("test-san-tiny", limits=DemoLimits(max_classes=10), gate=photos_gate(data_dir))
    seg, calls = _count_image_stage(backend, monkeypatch)
    photo = {"path": str(data_dir / "quokka.jpg")}
    backend.segment(photo, "quokka; grass", session="alice")
    out = backend.segment(photo, "quokka; grass; rock, stone; sky", session="alice", min_score=0.01)
    assert len(calls) == 1  # the second request ran only the text stage
    backend.segment(photo, "quokka; grass", session="bob")  # the same image from another user
    backend.segment(photo, "quokka; grass")  # no session: nothing kept
    assert len(calls) == 3
    backend.segment(photo, "quokka; grass", session="alice", opacity=0.2)
    assert len(calls) == 3  # alice's features are still hers
    bus = {"path": str(data_dir / "voc" / "2011_000003.jpg")}
    backend.segment(bus, "person", session="alice")
    assert len(calls) == 4  # a new image replaces alice's features
    rgb = np.asarray(Image.open(data_dir / "quokka.jpg").convert("RGB"))
    reference = seg.predict(rgb, [["quokka"], ["grass"], ["rock", "stone"], ["sky"]], min_score=0.01)
    assert len(calls) == 5 and np.array_equal(read_label(out.label_file), reference.label_map)
    for session in range(6):  # at most MAX_FEATURE_SESSIONS sessions keep features
        backend.segment(photo, "quokka", session=f"s{session}")
    assert len(backend._features) == demo.MAX_FEATURE_SESSIONS
    backend.close()


def test_session_features_live_in_the_shared_image_cache_under_the_shared_key(data_dir, monkeypatch):
    """The per-session store is the byte-bounded ``ImageCache`` (the segmenter's class) and a session's
    features are reused when ``cache_key`` (the segmenter's key function) of the request is theirs;
    with $OVSS_IMAGE_CACHE_MB=0 only the latest session keeps its image's features."""
    import ovss.api.requery as requery

    monkeypatch.setenv("OVSS_IMAGE_CACHE_MB", "0")
    keys = []
    real_key = requery.cache_key
    monkeypatch.setattr(requery, "cache_key", lambda *a: (keys.append(real_key(*a)), keys[-1])[1])
    backend = DemoBackend("test-san-tiny", gate=photos_gate(data_dir))
    assert isinstance(backend._features, requery.ImageCache)
    _, calls = _count_image_stage(backend, monkeypatch)
    photo = {"path": str(data_dir / "quokka.jpg")}
    backend.segment(photo, "quokka; grass", session="alice")
    backend.segment(photo, "quokka", session="alice")
    assert len(calls) == 1 and len(keys) == 2 and keys[0] == keys[1]
    assert backend._features.get(("alice",)).key == keys[0]  # the handle's own key is cache_key's
    backend.segment(photo, "quokka", session="bob")
    assert len(calls) == 2 and list(backend._features) == [("bob",)]  # 0 MiB: the latest session only
    backend.segment(photo, "quokka", session="alice")
    assert len(calls) == 3  # alice's were dropped, never bob's handed over
    backend.close()
