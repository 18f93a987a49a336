"""The benchmark catalog and the class-name files shipped in ovss/assets/classes."""

from __future__ import annotations

import hashlib
import itertools
from importlib import resources

import pytest

from ovss.data.catalog import ALL, BENCHMARKS, STANDARD, get_benchmark, list_benchmarks
from ovss.errors import DatasetError

# name: (num_classes, plain, san, catseg) list lengths; None = variant not shipped (falls back)
COUNTS = {
    "coco171": (171, 171, 171, 171),
    "ade150": (150, 150, 150, 150),
    "ade847": (847, 847, 847, 847),
    "pc59": (59, 59, 59, 59),
    "pc459": (459, 459, 459, 459),
    "voc20": (20, 20, 20, 20),
    "voc20b": (21, 21, None, 59),
    "voc21": (21, 21, None, None),
}


def test_catalog_has_every_benchmark_and_the_standard_five():
    assert set(BENCHMARKS) == set(COUNTS) == set(ALL) == set(list_benchmarks())
    assert STANDARD == ("ade847", "pc459", "ade150", "pc59", "voc20")


@pytest.mark.parametrize("name", list(COUNTS))
def test_class_name_counts(name):
    spec = BENCHMARKS[name]
    num_classes, plain, san, catseg = COUNTS[name]
    assert spec.num_classes == num_classes
    assert len(spec.class_names()) == plain
    assert len(spec.class_names("san")) == (san or plain)
    assert len(spec.class_names("catseg")) == (catseg or plain)
    assert ("san" in spec.variants) == (san is not None)
    assert all(n.strip() == n and n for n in spec.class_names("plain"))


def test_pinned_layout_counts_and_ignore_labels():
    expected = {"coco171": 5000, "ade150": 2000, "ade847": 2000, "pc59": 5104, "pc459": 5104}
    for name, count in expected.items():
        assert BENCHMARKS[name].num_images == count
    for name in ("voc20", "voc20b", "voc21"):
        assert BENCHMARKS[name].num_images == 1449
    for name, spec in BENCHMARKS.items():
        sixteen = name in ("ade847", "pc459")
        assert spec.ignore_index == (65535 if sixteen else 255)
        assert spec.label_ext == (".tif" if sixteen else ".png")
        assert spec.label_dtype == ("uint16" if sixteen else "uint8")
        assert spec.image_dir == f"{name}/images/val" and spec.label_dir == f"{name}/labels/val"
        assert spec.split_dirs("val") == (spec.image_dir, spec.label_dir)
    assert BENCHMARKS["coco171"].splits == {"val": 5000, "train": 118287}
    assert BENCHMARKS["voc20b"].merge_from == 20 and BENCHMARKS["voc20"].merge_from is None


def test_known_entries_of_each_variant():
    coco, ade150, ade847 = BENCHMARKS["coco171"], BENCHMARKS["ade150"], BENCHMARKS["ade847"]
    assert coco.class_names()[0] == "person" and coco.class_names("san")[170] == "wood"
    assert coco.class_names("san")[84] == "building-other"
    assert ade150.class_names("san")[6] == "road, route"  # SAN feeds the synonyms verbatim
    assert ade150.class_names("plain")[6] == "road"
    assert ade150.class_names("catseg")[7] == "bed "  # CAT-Seg's JSON keeps the trailing space
    assert ade150.class_names("sed")[8] == "windowpane"  # "sed" is the CAT-Seg/SED list
    assert ade847.class_names("san")[11] == "person, individual, someone, somebody, mortal, soul"
    assert ade847.class_names("plain")[846] == "adding machine"
    assert sum("," in n for n in ade847.class_names("catseg")) == 217  # catseg_sed.md section 3
    pc459 = BENCHMARKS["pc459"]
    assert pc459.class_names("san")[2] == "air conditioner"
    assert pc459.class_names("catseg")[2] == "airconditioner"  # CAT-Seg's spaces-removed names
    assert pc459.class_names()[430] == "unknown"
    assert BENCHMARKS["pc59"].class_names()[58] == "wood"
    assert BENCHMARKS["voc20"].class_names("san")[19] == "tv"
    assert BENCHMARKS["voc20"].class_names("catseg")[19] == "tvmonitor"
    assert BENCHMARKS["voc21"].class_names()[0] == "background"
    assert BENCHMARKS["voc20b"].class_names()[20] == "background"


def test_voc20b_background_names_are_the_pc59_classes_not_in_voc():
    voc20b = BENCHMARKS["voc20b"].class_names("catseg")
    voc20 = BENCHMARKS["voc20"].class_names("catseg")
    pc59 = BENCHMARKS["pc59"].class_names("catseg")
    assert voc20b[:20] == voc20
    assert sorted(voc20b[20:]) == sorted(set(pc59) - set(voc20))


def test_ade847_raw_ids_are_consistent_with_the_names():
    text = (resources.files("ovss") / "assets" / "classes" / "ade847.raw_ids.txt").read_text()
    ids = [int(v) for v in text.split()]
    assert len(ids) == 847 and len(set(ids)) == 847
    assert (ids[0], ids[11], ids[846]) == (2978, 1831, 3148)  # wall, person, adding machine
    # ADE20K_2021_17_01 numbers its objects alphabetically (ids >= 3100 were appended later): a
    # mistyped id would break the order.
    names = BENCHMARKS["ade847"].class_names("san")
    ordered = sorted((i, n.lower()) for i, n in zip(ids, names) if i < 3100)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(ordered))


def test_pinned_pascal_context_val_list():
    from ovss.data.prepare._pcontext_val import VAL_IDS, VAL_SHA256

    assert len(VAL_IDS) == 5104 == len(set(VAL_IDS))
    assert list(VAL_IDS) == sorted(VAL_IDS)
    assert (VAL_IDS[0], VAL_IDS[-1]) == ("2008_000002", "2010_006086")
    assert hashlib.sha256(("\n".join(VAL_IDS) + "\n").encode()).hexdigest() == VAL_SHA256


def test_pc59_ids_point_at_the_same_names_in_pc459():
    from ovss.data.prepare.pcontext import PC59_IDS

    pc459 = BENCHMARKS["pc459"].class_names("san")
    pc59 = BENCHMARKS["pc59"].class_names("san")
    renamed = {"diningtable": "table"}
    assert [pc459[i - 1] for i in PC59_IDS] == [renamed.get(n, n) for n in pc59]


def test_lookup_by_alias_and_errors():
    assert get_benchmark("A-847").name == "ade847"
    assert get_benchmark("PAS_20b").name == "voc20b"
    assert get_benchmark(" PC-459 ").name == "pc459"
    with pytest.raises(DatasetError, match="valid names: coco171, ade150"):
        get_benchmark("ade-9000")
    with pytest.raises(DatasetError, match="valid variants"):
        BENCHMARKS["ade150"].class_names("official-ish")
    with pytest.raises(DatasetError, match="valid splits"):
        BENCHMARKS["ade150"].split_dirs("train")


def test_class_names_returns_a_fresh_list():
    names = BENCHMARKS["voc20"].class_names()
    names[0] = "changed"
    assert BENCHMARKS["voc20"].class_names()[0] == "aeroplane"
