"""The demo's logic without gradio or a browser: inputs, limits, catalogue, outputs, errors."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.api.palettes import class_colours
from ovss.api.visualize import palette
from ovss.data.io import read_label
from ovss.demo import backend as demo
from ovss.demo.backend import NOT_UPLOADED, DemoBackend, DemoLimits, DemoUserError, UploadGate
from ovss.errors import OvssError, VocabularyError
from tests.conftest import DATA_DIR

LIMITS = DemoLimits(max_pixels=1_000_000, max_classes=5, max_upload_mb=1)


def photos_gate(data_dir: Path) -> UploadGate:
    """A gate admitting the sample photos as if they were the page's examples."""
    return UploadGate(examples=sorted(data_dir.rglob("*.jpg")))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------- classes
def test_parse_classes_synonyms_and_json():
    assert demo.parse_classes(" cat; sofa, couch ;wall; ", LIMITS) == [["cat"], ["sofa", "couch"], ["wall"]]
    assert demo.parse_classes('["cat", ["sofa", "couch"]]', LIMITS) == [["cat"], ["sofa", "couch"]]


@pytest.mark.parametrize("text", [None, "", "   ", ";;", " , ; ,"])
def test_parse_classes_empty_is_one_clear_message(text):
    with pytest.raises(DemoUserError, match=r"^no classes: type class names separated by ';'"):
        demo.parse_classes(text, LIMITS)


def test_parse_classes_limits_and_bad_json():
    with pytest.raises(DemoUserError, match=r"^6 classes given; this demo accepts up to 5 per request$"):
        demo.parse_classes("a; b; c; d; e; f", LIMITS)
    with pytest.raises(DemoUserError, match=r"characters long; this demo accepts up to 100,000$"):
        demo.parse_classes("a" * 100_001, LIMITS)
    with pytest.raises(DemoUserError, match=r"starts with '\[' but is not valid JSON"):
        demo.parse_classes('["cat", ', LIMITS)
    with pytest.raises(DemoUserError, match="must hold names or lists of synonyms"):
        demo.parse_classes("[1, 2]", LIMITS)


def test_parse_classes_never_reads_a_server_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    assert demo.parse_classes(str(secret), LIMITS) == [[str(secret)]]


# ----------------------------------------------------------------------------------------- uploads
def test_upload_path_and_missing_image():
    assert demo.upload_path({"path": "/x/a.jpg", "orig_name": "a.jpg"}) == Path("/x/a.jpg")
    for value in (None, "", {"path": None}):
        with pytest.raises(DemoUserError, match=r"^no image: upload an image"):
            demo.upload_path(value)


def test_read_upload_checks_size_pixels_and_format(tmp_path, data_dir):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (2**20 + 1))
    with pytest.raises(DemoUserError, match=r"^the upload is 1.0 MB; this demo accepts files up to 1 MB$"):
        demo.read_upload(big, LIMITS)
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_header(2000, 1000))  # 2 MP: over the limit, read from the header only
    with pytest.raises(
        DemoUserError, match=r"^the image is 2000x1000 pixels; this demo accepts up to 1 million"
    ):
        demo.read_upload(wide, LIMITS)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(40000, 40000))  # 1.6 G pixels: over Pillow's own bomb limit
    with pytest.raises(
        DemoUserError, match=r"^the image has far too many pixels; this demo accepts up to 1 "
    ):
        demo.read_upload(bomb, LIMITS)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(DemoUserError, match=r"^the upload is not an image this demo can read; use a JPEG"):
        demo.read_upload(text, LIMITS)
    with pytest.raises(
        DemoUserError, match=r"^the uploaded image is no longer on the server; upload it again$"
    ):
        demo.read_upload(tmp_path / "gone.jpg", LIMITS)
    photo = demo.read_upload(data_dir / "quokka.jpg", DemoLimits())
    expected = np.asarray(Image.open(data_dir / "quokka.jpg").convert("RGB"))
    assert photo.dtype == np.uint8 and np.array_equal(photo, expected)


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


# ----------------------------------------------------------------------------------------- models
def test_catalogue_offers_only_models_on_disk(monkeypatch, tmp_path):
    from ovss.weights.resolve import converted_path

    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    entries = {e.name: e for e in demo.model_catalogue("test-san-tiny", "san")}
    assert entries["test-sed-tiny"].usable and entries["test-sed-tiny"].status == "built in, random weights"
    assert not entries["san-vit-b16"].usable and entries["san-vit-b16"].status == "not downloaded"
    assert next(iter(entries)) == "test-san-tiny"
    converted_path("san-vit-b16").parent.mkdir(parents=True)
    converted_path("san-vit-b16").write_bytes(b"x")
    real = {e.name: e for e in demo.model_catalogue("catseg-vit-b16", "catseg")}
    assert real["san-vit-b16"].usable and real["san-vit-b16"].label == "san-vit-b16 (on disk)"
    assert real["catseg-vit-b16"].usable  # the start-up model was loaded by the command line
    assert not any(n.startswith("test-") for n in real)  # random models only in an offline check
    local = demo.model_catalogue("runs/x/model_final.safetensors", "sed")
    assert local[0].label == "model_final.safetensors (local file)"
    assert (local[0].name, local[0].family, local[0].status) == (
        "runs/x/model_final.safetensors",
        "sed",
        "local file",
    )
    table = demo.weights_table(list(real.values()))
    assert (
        "| `san-vit-b16` | san | on disk |" in table
        and "| `sed-convnext-b` | sed | not downloaded |" in table
    )
    assert "`ovss download NAME`" in table


def test_options_apply_only_to_their_family():
    assert demo.option_visibility("sed") == {"fast": True, "inference": False}
    assert demo.option_visibility("catseg") == {"fast": False, "inference": True}
    assert demo.option_visibility("san") == {"fast": False, "inference": True}  # the inference radio
    assert demo.model_options("sed", True, 4.0, "whole") == {"fast": True, "topk": 4}
    assert demo.model_options("sed", False, 4.0, "whole") == {}
    assert demo.model_options("san", True, 4.0, "") == {"inference": "d2"}
    assert demo.model_options("san", True, 4.0, "", model_default="mmseg") == {"inference": "mmseg"}
    assert demo.model_options("catseg", True, 4.0, "whole") == {"inference": "whole"}
    for bad in (0.5, 0, "abc", [3], float("inf")):
        with pytest.raises(
            DemoUserError, match=r"^'classes kept per pixel' must be a whole number >= 1, got"
        ):
            demo.model_options("sed", True, bad)
    assert demo.model_options("sed", True, "3") == {"fast": True, "topk": 3}


def test_catseg_v1_models_get_their_inference_modes():
    assert demo.option_visibility("catseg_v1") == {"fast": False, "inference": True}
    # CAT-Seg: whole first, as `ovss segment`; v1: the model's own protocol first (official / mmseg port)
    assert demo.inference_modes("catseg", "slide") == (["whole", "slide"], "whole")
    assert demo.inference_modes("catseg_v1", "slide") == (["whole", "slide"], "slide")
    assert demo.inference_modes("catseg_v1", "whole") == (["whole", "slide"], "whole")
    assert demo.inference_modes("catseg_v1", "mmseg") == (["mmseg", "whole"], "mmseg")
    assert demo.inference_modes("sed") == ([], "")
    assert demo.inference_modes("san", "mmseg") == (["mmseg", "d2"], "mmseg")
    assert demo.inference_modes("san", "d2") == (["d2", "mmseg"], "d2")
    assert demo.model_options("san", inference="whole", model_default="mmseg") == {"inference": "mmseg"}
    with pytest.raises(DemoUserError, match="inference 'nope' is not offered"):
        demo.model_options("san", inference="nope")
    assert [m for _, m in demo.inference_choices("san", ["mmseg", "d2"])] == ["mmseg", "d2"]
    assert demo.model_options("catseg", inference="") == {"inference": "whole"}
    assert demo.model_options("catseg_v1", inference="", model_default="mmseg") == {"inference": "mmseg"}
    assert demo.model_options("catseg_v1", inference="slide", model_default="slide") == {"inference": "slide"}
    offered = r"^inference 'mmseg' is not offered for this model; choose one of: whole, slide$"
    with pytest.raises(DemoUserError, match=offered):
        demo.model_options("catseg", inference="mmseg")
    backend = DemoBackend("test-san-tiny")
    for name, expected in [
        ("test-catseg-tiny", (["whole", "slide"], "whole")),
        ("test-catseg-v1-tiny", (["whole", "slide"], "whole")),
        ("test-catseg-v1-tiny.mmseg", (["mmseg", "whole"], "mmseg")),
        ("catseg-v1-r101-vit-b16", (["whole", "slide"], "slide")),
        ("catseg-v1-swinb-vit-l14.mmseg", (["mmseg", "whole"], "mmseg")),
        ("test-sed-tiny", ([], "")),
        ("test-san-tiny", (["d2", "mmseg"], "d2")),
        ("san-vit-b16.mmseg", (["mmseg", "d2"], "mmseg")),
    ]:
        assert backend.inference_modes(name) == expected, name


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


def test_limits_are_validated():
    with pytest.raises(OvssError, match=r"^demo limit max_classes must be > 0, got 0$"):
        DemoLimits(max_classes=0)


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
def test_gate_admits_only_uploads_and_examples(tmp_path):
    uploads = {str(tmp_path / "gradio" / "abc" / "cat.png")}
    gate = UploadGate(lambda: uploads, examples=[tmp_path / "gradio" / "ex" / "quokka.jpg"])
    assert gate.admits(tmp_path / "gradio" / "abc" / "cat.png")
    assert gate.admits(str(tmp_path / "gradio" / "ex" / "quokka.jpg"))
    # A path that normalises onto an admitted file is the same file; any other path is not.
    assert gate.admits(f"{tmp_path}/gradio/abc/../abc/cat.png")
    for other in ("/etc/passwd", f"{tmp_path}/gradio/abc", f"{tmp_path}/gradio/abc/cat.png/..", "cat.png"):
        assert not gate.admits(other), other
    uploads.add(str(tmp_path / "later.png"))  # read at each request: a new upload is admitted at once
    assert gate.admits(tmp_path / "later.png")
    assert not UploadGate().admits(tmp_path / "gradio" / "abc" / "cat.png")  # the default admits nothing


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


def test_changing_only_the_classes_reuses_the_image_features(data_dir, monkeypatch):
    """Within one browser session a request that changes only the classes (or display controls) runs
    only the text stage; another session never gets them (no timing hint about others' images)."""
    backend = DemoBackend("test-san-tiny", limits=DemoLimits(max_classes=10), gate=photos_gate(data_dir))
    seg = backend.segmenter()
    calls = []
    real_stage = seg.model.image_stage
    monkeypatch.setattr(seg.model, "image_stage", lambda *a, **k: (calls.append(1), real_stage(*a, **k))[1])
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
