"""CLIP BPE tokenizer: exact parity with the official open_clip tokenizer, shapes, truncation."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from ovss.errors import ConfigError, VocabularyError, WeightsNotFoundError
from ovss.towers.tokenizer import DEFAULT_BPE_PATH, Tokenizer, bytes_to_unicode, get_tokenizer, tokenize
from ovss.utils import sha256_file
from tests.conftest import parity_dir, requires


def _fixture_files() -> list:
    root = parity_dir()
    files = sorted(root.glob("tokenizer*.json")) if root.is_dir() else []
    if not files:
        return [pytest.param(None, id="no-tokenizer-fixture", marks=requires(root / "tokenizer*.json"))]
    return [pytest.param(f, id=f.name) for f in files]


@pytest.mark.parametrize("path", _fixture_files())
def test_parity_with_official_tokenizer(path) -> None:
    fixture = json.loads(path.read_text(encoding="utf-8"))
    tok = get_tokenizer()
    assert (fixture["sot"], fixture["eot"]) == (tok.sot_token_id, tok.eot_token_id)
    items = fixture["items"]
    assert items, f"{path.name} has no items"
    batch = tok([item["text"] for item in items])
    for row, item in enumerate(items):
        ids = item["ids"]
        if ids[-1] == fixture["eot"] and len(ids) < 77:  # untruncated: encode() is the middle
            got = [fixture["sot"], *tok.encode(item["text"]), fixture["eot"]]
            assert got == ids, f"first mismatch for text {item['text']!r}: {got} != {ids}"
        expected = item.get("ids_padded_77", ids + [0] * (77 - len(ids)))
        got_row = batch[row].tolist()
        assert got_row == expected, f"first mismatch for text {item['text']!r}: {got_row} != {expected}"


def test_known_ids() -> None:
    # Independent of the fixtures: the ids every CLIP user knows.
    assert tokenize("a photo of a cat.")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert tokenize("")[0, :3].tolist() == [49406, 49407, 0]
    # A literal special token (open_clip's spelling) maps to its id, as in the official tokenizer;
    # OpenAI's spelling is plain text there (as in open_clip).
    assert get_tokenizer().encode("<end_of_text>") == [49407]
    assert get_tokenizer().encode("<|endoftext|>") == [27, 347, 40786, 4160, 91, 285]


def test_vocabulary_file() -> None:
    # The standard CLIP file (same bytes as the one OpenAI CLIP and open_clip ship).
    assert sha256_file(DEFAULT_BPE_PATH) == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    with gzip.open(DEFAULT_BPE_PATH, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    assert lines[0] == '"bpe_simple_vocab_16e6.txt#version: 0.2'  # sic: the official header line
    assert len(lines) == 1 + 262144 + 1  # header, merges by rank, empty string after the last newline
    assert lines[1] == "i n" and lines[48894] == "jeky ll</w>"  # first and last merge CLIP uses
    tok = Tokenizer()
    tok._ensure_loaded()
    assert len(tok.merge_ranks) == 48894
    assert len(tok.encoder) == len(tok.decoder) == 49408
    assert tok.encoder["<start_of_text>"] == 49406
    assert tok.decoder[256] == "!</w>"  # bytes first, then the same with the end-of-word marker


def test_lazy_loading() -> None:
    tok = Tokenizer()
    assert not hasattr(tok, "encoder")
    tok.encode("x")
    assert len(tok.encoder) == 49408


def test_bytes_to_unicode_is_a_printable_bijection() -> None:
    mapping = bytes_to_unicode()
    assert len(mapping) == len(set(mapping.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in mapping.values())
    assert mapping[ord("a")] == "a" and mapping[ord(" ")] == chr(256 + 32)
    # Iteration order = token ids 0..255: printable bytes first, then the remapped ones.
    order = list(mapping.values())
    assert order[:2] == ["!", '"'] and order[187] == "ÿ" and order[188] == chr(256)


def test_truncation_keeps_eot_last() -> None:
    tokens = tokenize(" ".join(f"word{i}" for i in range(200)))
    assert tokens.shape == (1, 77)
    assert tokens[0, 0].item() == 49406
    assert tokens[0, 76].item() == 49407
    assert (tokens[0, :76] != 49407).all() and (tokens[0] != 0).all()
    short = tokenize(" ".join(["cat"] * 20), context_length=8)
    assert short[0].tolist() == [49406, *[2368] * 6, 49407]


def test_batch_shape_and_padding() -> None:
    tokens = tokenize(["a cat", "a photo of a dog on the grass", "x"], context_length=16)
    assert tokens.shape == (3, 16) and tokens.dtype == torch.long
    lengths = [4, 10, 3]  # sot + words + eot
    for row, n in enumerate(lengths):
        assert tokens[row, n - 1].item() == 49407
        assert (tokens[row, n:] == 0).all()
        assert (tokens[row, :n] != 0).all()
    assert tokenize("a cat").shape == (1, 77)


def test_cleaning() -> None:
    enc = get_tokenizer().encode
    assert enc("  A   Photo\tOF\n a CAT ") == enc("a photo of a cat")
    assert enc("&amp;lt;b&amp;gt;") == enc("<b>")  # html.unescape applied twice
    assert enc("fÃ©e") == enc("fée")  # ftfy repairs mojibake


def test_decode_round_trip() -> None:
    tok = get_tokenizer()
    for text in ["A Photo of a Dog", "café naïve résumé", "東京タワー", "supercalifragilisticexpialidocious"]:
        assert tok.decode(tok.encode(text)) == text.lower()
    assert tok.decode(tok.encode("a cat.")) == "a cat ."
    assert tok.decode(torch.tensor([320, 2368])) == "a cat"


def test_errors() -> None:
    tok = get_tokenizer()
    with pytest.raises(VocabularyError, match="in \\[0, 49408\\)"):
        tok.decode([49408])
    with pytest.raises(VocabularyError, match="strings"):
        tok.encode(3)  # type: ignore[arg-type]
    with pytest.raises(VocabularyError, match="sequence of strings"):
        tok({"a", "b"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="context_length"):
        tok("a", context_length=1)
    with pytest.raises(WeightsNotFoundError, match="bpe_path"):
        Tokenizer("/nonexistent/bpe.txt.gz").encode("a")


def test_many_prompts_shape_and_bpe_cache() -> None:
    # 171 classes x 80 templates (the SED/COCO-Stuff workload); timing lives in bench/bench_text.py.
    tok = Tokenizer()
    classes = [f"class{i} thing" for i in range(171)]
    templates = [f"a photo number {j} of the {{}}." for j in range(80)]
    tokens = tok([t.format(c) for c in classes for t in templates])
    assert tokens.shape == (171 * 80, 77)
    assert tokens[0].tolist()[: len(tok.encode(templates[0].format(classes[0]))) + 2][-1] == tok.eot_token_id
