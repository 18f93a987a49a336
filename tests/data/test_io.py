"""read_image / read_label / write_label_png on real photos and on generated edge-case files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovss.data.io import read_image, read_label, voc_palette, write_label_png
from ovss.errors import ImageReadError

# VOC class indices (order of class_names.txt): 5 bottle, 6 bus, 7 car, 9 chair, 15 person, 18 sofa.
VOC_CLASSES = {
    "2011_000003": {0, 5, 15, 255},
    "2011_000006": {0, 9, 15, 18, 255},
    "2011_000025": {0, 6, 7},  # no boundary pixels in this mask
}


def _quadrants() -> np.ndarray:
    """(40, 60, 3) uint8 with four flat, distinct colour blocks (robust to JPEG loss)."""
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:20, :30] = (255, 0, 0)
    img[:20, 30:] = (0, 255, 0)
    img[20:, :30] = (0, 0, 255)
    img[20:, 30:] = (255, 255, 0)
    return img


def _block_means(img: np.ndarray) -> np.ndarray:
    """Mean colour of the centre of each quadrant (away from JPEG chroma bleeding at the edges)."""
    h, w = img.shape[:2]
    qh, qw = h // 4, w // 4
    centres = [(qh, qw), (qh, 3 * qw), (3 * qh, qw), (3 * qh, 3 * qw)]
    return np.array([img[y - 3 : y + 3, x - 3 : x + 3].mean((0, 1)) for y, x in centres])


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("stem", sorted(VOC_CLASSES))
def test_real_voc_photo_and_label(data_dir, stem):
    image = read_image(data_dir / "voc" / f"{stem}.jpg")
    with Image.open(data_dir / "voc" / f"{stem}.jpg") as ref:
        expected = np.asarray(ref.convert("RGB"))
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert image.flags.c_contiguous and image.flags.writeable
    np.testing.assert_array_equal(image, expected)

    label = read_label(data_dir / "voc" / f"{stem}.png")
    assert label.dtype == np.int64 and label.shape == image.shape[:2]
    assert set(np.unique(label).tolist()) == VOC_CLASSES[stem]  # palette indices, not colours


def test_real_photo_path_types(data_dir):
    path = data_dir / "quokka.jpg"
    a = read_image(path)
    assert a.shape == (643, 960, 3)
    np.testing.assert_array_equal(read_image(str(path)), a)
    with Image.open(path) as pil:
        np.testing.assert_array_equal(read_image(pil), a)
    np.testing.assert_array_equal(read_image(a), a)


# ---------------------------------------------------------------- generated files


def test_exif_orientation_is_applied(tmp_path):
    img = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90 degrees clockwise
    Image.fromarray(img).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (60, 40, 3)
    expected = np.rot90(img, k=-1)  # clockwise
    np.testing.assert_allclose(_block_means(out), _block_means(expected), atol=6)
    # without the tag nothing is rotated
    Image.fromarray(img).save(tmp_path / "plain.jpg", quality=95)
    assert read_image(tmp_path / "plain.jpg").shape == (40, 60, 3)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[:, :2, 3] = 0  # transparent pixels keep their stored colour
    rgba[:, 2:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3)
    assert (out == (10, 20, 30)).all()
    np.testing.assert_array_equal(read_image(rgba), out)


def test_palette_image_gives_colours(tmp_path):
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(index)
    image.putpalette([200, 0, 0, 0, 100, 0, 0, 0, 50] + [0] * 759)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], (200, 0, 0))
    np.testing.assert_array_equal(out[0, 1], (0, 100, 0))
    np.testing.assert_array_equal(out[1, 0], (0, 0, 50))


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_gray_scaled_to_eight(tmp_path, ext):
    values = np.array([[0, 257, 65535], [32896, 128, 129]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"g16.{ext}")
    out = read_image(tmp_path / f"g16.{ext}")
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255], [128, 0, 1]])
    assert (out[..., 0] == out[..., 2]).all()


def test_grayscale_and_cmyk(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))

    Image.new("CMYK", (6, 5), (255, 0, 0, 0)).save(tmp_path / "c.tif")  # pure cyan
    out = read_image(tmp_path / "c.tif")
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out[0, 0], (0, 255, 255))


def test_not_an_image_and_missing(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a JPEG\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg") as info:
        read_image(fake)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match=r"^image file .*missing\.png does not exist; check the path$"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="is a folder, expected a file; pass the file inside it"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_label(tmp_path / "missing.png")


def test_truncated_file(tmp_path):
    Image.fromarray(_quadrants()).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")


# ---------------------------------------------------------------- numpy input


def test_numpy_inputs():
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(read_image(gray), np.stack([gray] * 3, axis=2))
    np.testing.assert_array_equal(read_image(gray[:, :, None]), np.stack([gray] * 3, axis=2))
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(rgba), rgba[..., :3])
    floats = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    np.testing.assert_array_equal(read_image(floats), [[[0, 128, 255]]])


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((3, 8, 8), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((8, 8, 3), np.int32), "dtype int32"),
        (np.full((8, 8, 3), 2.0), r"\[2, 2\]"),
        (np.full((8, 8, 3), np.nan), "float"),
    ],
)
def test_numpy_input_errors(array, match):
    with pytest.raises(ImageReadError, match=match):
        read_image(array)


def test_unsupported_type():
    with pytest.raises(ImageReadError, match="list"):
        read_image([[0, 1]])


# ---------------------------------------------------------------- labels


def test_read_label_palette_index_not_colour(tmp_path):
    index = np.array([[0, 3], [255, 1]], dtype=np.uint8)
    image = Image.fromarray(index)
    image.putpalette(list(range(255, -1, -1)) * 3)  # colour != index
    image.save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), index)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_read_label_sixteen_bit(tmp_path, ext):
    values = np.array([[0, 846, 65535], [300, 1, 2]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"l.{ext}")
    out = read_label(tmp_path / f"l.{ext}")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, values)


def test_read_label_refuses_colour(tmp_path):
    Image.fromarray(_quadrants()).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="mode 'RGB'"):
        read_label(tmp_path / "rgb.png")


def test_write_label_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 151, (9, 11))
    small[0, 0] = 255
    path = write_label_png(tmp_path / "sub" / "small.png", small)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im.getpalette()).reshape(-1, 3)[:21], voc_palette(21))
    np.testing.assert_array_equal(read_label(path), small)

    big = rng.integers(0, 847, (9, 11))
    big[0, 0] = 65535
    path = write_label_png(tmp_path / "big.png", big)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(read_label(path), big)

    colours = [(1, 2, 3), (4, 5, 6)]
    path = write_label_png(tmp_path / "pal.png", np.array([[0, 1]]), palette=colours)
    np.testing.assert_array_equal(read_image(path), [[(1, 2, 3), (4, 5, 6)]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "pal.png", "sub"]  # no temp files


def test_write_label_png_errors(tmp_path):
    with pytest.raises(ValueError, match="2-D integer"):
        write_label_png(tmp_path / "x.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        write_label_png(tmp_path / "x.png", np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="bit_depth=16"):
        write_label_png(tmp_path / "x.png", np.array([[300]]), bit_depth=8)
    assert not (tmp_path / "x.png").exists()


def test_voc_palette_known_colours():
    pal = voc_palette(21)
    np.testing.assert_array_equal(pal[:4], [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)])
    np.testing.assert_array_equal(pal[15], (192, 128, 128))  # person




def test_a_path_with_a_nul_byte_is_one_line():
    with pytest.raises(ImageReadError) as info:
        read_image("a\x00b.jpg")
    assert str(info.value) == "cannot read image file a\\x00b.jpg (embedded null byte); pass a real file name"
