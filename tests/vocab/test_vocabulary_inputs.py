"""Vocabularies a person writes: repeated classes, over-long names, path-like strings, file encodings."""

from __future__ import annotations

import json

import pytest

from ovss.cli.main import main
from ovss.errors import VocabularyError
from ovss.vocab.vocabulary import MAX_CLASS_TOKENS, Vocabulary, parse_vocabulary


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cat; dog; cat", "classes 0 ('cat') and 2 ('cat') are the same class;"),
        ("Cat; dog; cAT", "classes 0 ('Cat') and 2 ('cAT') are the same class up to case;"),
        ("sofa, couch; Sofa,  Couch", "are the same class up to case"),
        ('["cat", "CAT"]', "are the same class up to case"),
    ],
)
def test_repeated_classes_are_refused(spec, message):
    with pytest.raises(VocabularyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_vocabulary(spec)


def test_repeats_in_a_class_file_are_refused_but_python_lists_are_taken_as_given(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("road\nsky\nRoad\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="classes 0 .* and 2 .* up to case"):
        parse_vocabulary(path)
    # official benchmark lists repeat names (ADE-847: "screen", "bag", ...): scored as given
    assert parse_vocabulary(["bag", "screen", "bag"]).names == ["bag", "screen", "bag"]


def test_a_class_longer_than_the_clip_context_is_an_error_not_cut():
    long_a = " ".join(["word"] * 70) + " alpha"
    long_b = " ".join(["word"] * 70) + " beta"  # equal in the first 77 tokens: would embed identically
    for spec in (f"cat; {long_a}", f"{long_b}; cat"):
        with pytest.raises(VocabularyError, match=rf"is \d+ CLIP tokens long; .* at most {MAX_CLASS_TOKENS}"):
            parse_vocabulary(spec)
    with pytest.raises(VocabularyError, match="CLIP tokens long"):
        Vocabulary.from_names(["cat", long_a])  # the API's lists too
    fits = " ".join(["word"] * (MAX_CLASS_TOKENS - 1))
    assert len(parse_vocabulary(f"cat; {fits}")) == 2
    # multi-byte characters: each may take several byte-level tokens
    with pytest.raises(VocabularyError, match="CLIP tokens long"):
        parse_vocabulary("cat; " + "猫" * 40)


@pytest.mark.parametrize("spec", ["classes.csv", "labels/names.tsv", "./names", "~/my classes.lst", "data/"])
def test_a_missing_path_like_value_is_an_error_not_a_class(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VocabularyError, match="does not exist; pass an existing"):
        parse_vocabulary(spec)


@pytest.mark.parametrize("spec", ["person", "a/c unit", "st. bernard", "sofa, couch"])
def test_names_that_are_not_paths_stay_classes(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_vocabulary(spec).classes[0].text == spec


def test_a_folder_or_fifo_as_class_file(tmp_path):
    with pytest.raises(VocabularyError, match="is a folder"):
        parse_vocabulary(tmp_path)
    import os

    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(VocabularyError, match="not a regular file"):  # and does not hang
        parse_vocabulary(str(fifo))


def test_encodings(tmp_path):
    names = ["café", "crème brûlée", "sky"]
    text = "\n".join(names) + "\n"
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert parse_vocabulary(bom).names == names  # BOM not in the first name
    bom_json = tmp_path / "bom.json"
    bom_json.write_bytes(b"\xef\xbb\xbf" + json.dumps(names).encode("utf-8"))
    assert parse_vocabulary(bom_json).names == names
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        path = tmp_path / f"{encoding}.txt"
        data = text.encode(encoding)
        if encoding != "utf-16":  # utf-16 writes its own BOM; add one to the explicit-endian variants
            data = ("\ufeff" + text).encode(encoding)
        path.write_bytes(data)
        assert parse_vocabulary(path).names == names, encoding
    no_bom = tmp_path / "nobom.txt"
    no_bom.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(VocabularyError, match="NUL bytes .*save it as UTF-8"):
        parse_vocabulary(no_bom)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(text.encode("latin-1"))
    with pytest.raises(VocabularyError, match=r"is not UTF-8 \(byte 0xe9 at offset 3; Latin-1"):
        parse_vocabulary(latin)
    assert parse_vocabulary("\ufeffcat; dog").names == ["cat", "dog"]


def test_cli_prints_one_line_for_a_vocabulary_error(capsys, tmp_path):
    code = main(["segment", str(tmp_path / "x.jpg"), "--model", "test-san-tiny", "--classes", "classes.csv",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and err.startswith("ovss: error:")
