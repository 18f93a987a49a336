"""Vocabularies a person writes: repeated classes, over-long names, path-like strings, file encodings."""

from __future__ import annotations

import json
import os

import pytest

from ovss.cli.main import main
from ovss.errors import VocabularyError
from ovss.vocab.vocabulary import MAX_CLASS_TOKENS, Vocabulary, parse_vocabulary
from tests.conftest import noise_photo, one_line_error


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


# ------------------------------------------------------------------------------------- long class names
def test_a_very_long_class_name_is_the_documented_error_not_oserror(tmp_path, capsys):
    import ovss
    from ovss.vocab.vocabulary import parse_vocabulary

    eighty = " ".join(["word"] * 80)
    for spec in (eighty, "x" * 400, "x" * 5000, "a/" * 300 + "b"):
        with pytest.raises(VocabularyError, match=r"CLIP tokens long; .* at most 66"):
            parse_vocabulary(spec)
    photo = noise_photo(tmp_path / "p.png")
    argv = ["segment", str(photo), "--model", "test-san-tiny", "--classes", eighty, "--out", f"{tmp_path}/o"]
    assert main(argv) == 1
    err = one_line_error(capsys)
    assert "is 80 CLIP tokens long; a class (synonyms included) may have at most 66" in err
    seg = ovss.load("test-san-tiny")
    with pytest.raises(VocabularyError, match="at most 66"):
        seg.predict(photo, "x" * 400)


def test_path_like_names_that_cannot_be_looked_up_are_one_error(tmp_path, monkeypatch):
    from ovss.vocab.vocabulary import parse_vocabulary

    monkeypatch.chdir(tmp_path)
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    cases = {
        "x" * 400 + ".txt": "File name too long",
        "loop.txt": "Too many levels of symbolic links",
        "a\x00b.txt": "embedded null byte",
        "~no-such-user-ovss/classes.txt": "home directory",
    }
    for spec, reason in cases.items():
        with pytest.raises(VocabularyError, match=rf"^cannot read class file .*{reason}"):
            parse_vocabulary(spec)


def test_a_bytes_vocabulary_is_refused_by_type_not_as_class_99():
    from ovss.errors import VocabularyError
    from ovss.vocab.vocabulary import parse_vocabulary

    with pytest.raises(VocabularyError, match=r"^cannot read a vocabulary from bytes; decode them first"):
        parse_vocabulary(b"cat; dog")


def test_a_line_break_in_a_class_string_separates_classes_as_in_a_file():
    """--classes "$(cat classes.txt)" made ONE class "cat dog sky" (line breaks became spaces)."""
    from ovss.vocab.vocabulary import parse_vocabulary

    assert parse_vocabulary("cat\ndog\r\nsky; sofa, couch\n").names == ["cat", "dog", "sky", "sofa"]
    assert [c.synonyms for c in parse_vocabulary("cat\nsofa, couch").classes] == [("cat",), ("sofa", "couch")]


def test_a_json_object_as_class_string_is_refused_not_one_class_named_like_it():
    """--classes '{"a": 1}' became one class named '{"a":1}'."""
    from ovss.errors import VocabularyError
    from ovss.vocab.vocabulary import parse_vocabulary

    with pytest.raises(VocabularyError, match=r"^the --classes JSON must be a JSON list of .* got dict"):
        parse_vocabulary('{"a": 1}')
    assert parse_vocabulary("{curly} thing; cat").names == ["{curly} thing", "cat"]
