from __future__ import annotations

import pytest
import torch

from ovss.errors import CacheError
from ovss.vocab.embeddings import TextEmbedder
from ovss.vocab.vocabulary import parse_vocabulary


class CountingEncoder:
    """Deterministic fake encode_text: (P, K, L) tokens -> (K, P, 4) unit vectors; counts classes."""

    def __init__(self) -> None:
        self.calls = 0
        self.classes = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.classes += tokens.shape[1]
        feats = torch.stack(
            [
                tokens[..., :4].float().sum(-1),
                tokens[..., 1:5].float().sum(-1) + 1,
                tokens.float().mean(-1),
                torch.ones(tokens.shape[:2]),
            ],
            dim=-1,
        )
        feats = feats.permute(1, 0, 2)
        return feats / feats.norm(dim=-1, keepdim=True)


def fake_tokenize(texts: list[str], length: int = 8) -> torch.Tensor:
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) for c in t][:length]
        out[i, : len(codes)] = torch.tensor(codes)
    return out


def test_cached_per_class_string(tmp_path):
    enc = CountingEncoder()
    emb = TextEmbedder(
        enc, "vild", "mean", cache_id="abc-float32", cache_dir=tmp_path, tokenize=fake_tokenize
    )
    a = emb(parse_vocabulary("cat; dog"))
    assert a.shape == (2, 14, 4) and enc.classes == 2
    b = emb(parse_vocabulary("dog; cat; bird"))  # only "bird" is new
    assert enc.classes == 3
    torch.testing.assert_close(b[0], a[1], rtol=0, atol=0)
    # a new embedder with the same cache id reads the disk cache and encodes nothing
    enc2 = CountingEncoder()
    emb2 = TextEmbedder(
        enc2, "vild", "mean", cache_id="abc-float32", cache_dir=tmp_path, tokenize=fake_tokenize
    )
    torch.testing.assert_close(emb2(parse_vocabulary("bird")), b[2:], rtol=0, atol=0)
    assert enc2.calls == 0
    # another weights digest does not reuse it
    emb3 = TextEmbedder(
        enc2, "vild", "mean", cache_id="xyz-float32", cache_dir=tmp_path, tokenize=fake_tokenize
    )
    emb3(parse_vocabulary("bird"))
    assert enc2.classes == 1


def test_synonym_policies_match_hand_computation():
    enc = CountingEncoder()
    mean = TextEmbedder(enc, "single", "mean", tokenize=fake_tokenize)(parse_vocabulary("sofa, couch"))
    sofa = enc(fake_tokenize(["a photo of a sofa."]).view(1, 1, -1))[0]
    couch = enc(fake_tokenize(["a photo of a couch."]).view(1, 1, -1))[0]
    expected = (sofa + couch) / (sofa + couch).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(mean[0], expected)
    first = TextEmbedder(enc, "single", "first", tokenize=fake_tokenize)(parse_vocabulary("sofa, couch"))
    torch.testing.assert_close(first[0], sofa)
    verbatim = TextEmbedder(enc, "single", "verbatim", tokenize=fake_tokenize)(
        parse_vocabulary("sofa, couch")
    )
    whole = enc(fake_tokenize(["a photo of a sofa, couch."]).view(1, 1, -1))[0]
    torch.testing.assert_close(verbatim[0], whole)


def test_template_order_is_p_major():
    seen = []

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens.clone())
        return torch.ones(tokens.shape[1], 3)

    TextEmbedder(encode, "vild", "first", tokenize=fake_tokenize, chunk=2)(parse_vocabulary("ab; cd; ef"))
    assert [t.shape[:2] for t in seen] == [(14, 2), (14, 1)]
    # row (p, k) holds template p filled with class k
    assert seen[0][0, 1].tolist() == fake_tokenize(["a photo of a cd."])[0].tolist()
    assert seen[0][1, 0].tolist() == fake_tokenize(["This is a photo of a ab"])[0].tolist()


def test_corrupt_disk_cache_is_recomputed(tmp_path):
    (tmp_path / "id-single.safetensors").write_bytes(b"garbage")
    enc = CountingEncoder()
    out = TextEmbedder(enc, "single", "first", cache_id="id", cache_dir=tmp_path, tokenize=fake_tokenize)(
        parse_vocabulary("cat")
    )
    assert out.shape == (1, 1, 4) and enc.classes == 1


# ----------------------------------------------------------------------------------------- disk cache checks
def wide_tokenize(texts: list[str]) -> torch.Tensor:
    """Like fake_tokenize but 64 codes long, so that class names change the embeddings."""
    return fake_tokenize(texts, length=64)


def _embedder(tmp_path, enc, cache_id="abc-float32"):
    return TextEmbedder(enc, "vild", "mean", cache_id=cache_id, cache_dir=tmp_path, tokenize=wide_tokenize)


def _tamper(path, change):
    """Rewrite the cache file with ``change(tensors)`` applied, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(change(tensors), str(path), metadata=meta)


@pytest.mark.parametrize("kind", ["nan", "random", "permuted", "fp16", "shape", "other_id", "templates"])
def test_bad_disk_cache_is_recomputed_never_used(kind, tmp_path, caplog):
    vocab = parse_vocabulary("cat; dog; bird")
    fresh = _embedder(tmp_path, CountingEncoder())(vocab)
    path = tmp_path / "abc-float32-vild.safetensors"
    keys = sorted(_tamper_keys(path))
    assert not torch.equal(fresh[0], fresh[1])
    changes = {
        "nan": lambda t: {**t, keys[0]: torch.full_like(t[keys[0]], float("nan"))},
        "random": lambda t: {**t, keys[1]: torch.randn_like(t[keys[1]])},
        "permuted": lambda t: {keys[0]: t[keys[1]], keys[1]: t[keys[0]], keys[2]: t[keys[2]]},
        "fp16": lambda t: {k: v.half() for k, v in t.items()},
        "shape": lambda t: {k: v[:3] for k, v in t.items()},
    }
    if kind in changes:
        _tamper(path, changes[kind])
    elif kind == "other_id":  # a cache file of other weights copied under this name
        other = tmp_path / "other"
        _embedder(other, CountingEncoder(), cache_id="zzz-float32")(vocab)
        (other / "zzz-float32-vild.safetensors").replace(path)
    else:  # made with another template list under the same set name (an older ovss)
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            meta = {**f.metadata(), "templates_sha256": "0" * 64}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        save_file(tensors, str(path), metadata=meta)
    enc = CountingEncoder()
    with caplog.at_level("WARNING", logger="ovss"):
        again = _embedder(tmp_path, enc)(vocab)
    assert enc.classes == 3  # everything recomputed
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    assert "ignoring the text-embedding cache" in caplog.text
    # and the file was rewritten valid: the next embedder reads it without encoding
    enc2 = CountingEncoder()
    torch.testing.assert_close(_embedder(tmp_path, enc2)(vocab), fresh, rtol=0, atol=0)
    assert enc2.calls == 0


def _tamper_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_cache_path_that_is_a_folder_is_a_clear_error(tmp_path):
    from ovss.errors import CacheError

    (tmp_path / "abc-float32-vild.safetensors").mkdir()
    with pytest.raises(CacheError, match="is a folder, expected a file; delete or move it"):
        _embedder(tmp_path, CountingEncoder())(parse_vocabulary("cat"))


# ----------------------------------------------------------------------------------------- memory bound
def test_memory_cache_is_an_lru_bounded_in_bytes(tmp_path):
    enc = CountingEncoder()
    per_string = 14 * 4 * 4  # vild: 14 templates x 4 dims x float32
    emb = TextEmbedder(enc, "vild", "first", tokenize=fake_tokenize, memory_mb=10 * per_string / 2**20)
    assert emb.memory_limit == 10 * per_string
    for i in range(50):
        emb(parse_vocabulary(f"class{i}a; class{i}b"))
        emb(parse_vocabulary("keep"))  # used all the time: never evicted
        assert emb.memory_bytes <= emb.memory_limit
    assert enc.classes == 101  # "keep" encoded once
    before = enc.classes
    emb(parse_vocabulary("class49b"))  # recent: still cached
    assert enc.classes == before
    emb(parse_vocabulary("class0a"))  # oldest: evicted, encoded again
    assert enc.classes == before + 1
    # a vocabulary larger than the bound is still embedded whole
    big = emb(parse_vocabulary("; ".join(f"w{i}" for i in range(30))))
    assert big.shape == (30, 14, 4) and emb.memory_bytes <= emb.memory_limit


def test_memory_bound_from_the_environment(monkeypatch):
    from ovss.errors import CacheError

    monkeypatch.setenv("OVSS_TEXT_CACHE_MB", "1.5")
    assert TextEmbedder(CountingEncoder(), "vild", "first").memory_limit == int(1.5 * 2**20)
    monkeypatch.setenv("OVSS_TEXT_CACHE_MB", "lots")
    with pytest.raises(CacheError, match="OVSS_TEXT_CACHE_MB='lots' is not a number"):
        TextEmbedder(CountingEncoder(), "vild", "first")


def test_text_cache_folder_that_is_a_file(home):
    from ovss.vocab.embeddings import TextEmbedder
    from ovss.vocab.vocabulary import parse_vocabulary

    home.mkdir()
    (home / "text").write_text("x")
    emb = TextEmbedder(
        lambda t: torch.ones(t.shape[1], 2), "single", "first", cache_id="id", cache_dir=home / "text",
        tokenize=lambda texts: torch.zeros(len(texts), 4, dtype=torch.long),
    )  # fmt: skip
    with pytest.raises(CacheError, match="text is a file, not a folder"):
        emb(parse_vocabulary("cat"))
