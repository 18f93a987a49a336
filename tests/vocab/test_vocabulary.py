from __future__ import annotations

import json

import pytest

from ovss.errors import VocabularyError
from ovss.vocab.vocabulary import Vocabulary, parse_vocabulary


def test_cli_string_classes_and_synonyms():
    v = parse_vocabulary("cat;  sofa ,couch ; wall;")
    assert v.names == ["cat", "sofa", "wall"]
    assert v.classes[1].synonyms == ("sofa", "couch")
    assert v.prompts_for("verbatim") == [["cat"], ["sofa ,couch"], ["wall"]]
    assert v.prompts_for("first") == [["cat"], ["sofa"], ["wall"]]
    assert v.prompts_for("mean") == [["cat"], ["sofa", "couch"], ["wall"]]


def test_json_list_and_files(tmp_path):
    assert parse_vocabulary('["cat", ["sofa", "couch"]]').prompts_for("mean") == [["cat"], ["sofa", "couch"]]
    j = tmp_path / "classes.json"
    j.write_text(json.dumps(["a", "b, c"]))
    assert parse_vocabulary(str(j)).names == ["a", "b"]
    t = tmp_path / "classes.txt"
    t.write_text("# comment\nroad, route\n\nsky\n")
    v = parse_vocabulary(t)
    assert v.names == ["road", "sky"] and v.classes[0].text == "road, route"


def test_single_class_string_is_not_a_file():
    assert parse_vocabulary("person").names == ["person"]


@pytest.mark.parametrize("spec", ["", " ; ;", "[]", []])
def test_empty_vocabulary_is_one_clear_error(spec):
    with pytest.raises(VocabularyError, match="vocabulary is empty"):
        parse_vocabulary(spec)


def test_malformed_inputs(tmp_path):
    with pytest.raises(VocabularyError, match="not valid JSON"):
        parse_vocabulary("[1, ")
    with pytest.raises(VocabularyError, match="does not exist"):
        parse_vocabulary(str(tmp_path / "missing.txt"))
    with pytest.raises(VocabularyError, match="class 1 is empty"):
        Vocabulary.from_names(["a", " , "])
    with pytest.raises(VocabularyError, match="unknown synonym policy"):
        parse_vocabulary("a").prompts_for("avg")
