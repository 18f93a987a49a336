from __future__ import annotations

import torch

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


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 8, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) for c in t][:8]
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
