"""TextTransformer against the OpenAI-style reference (full 77-token context), trimming, dtypes."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import ConfigError
from ovss.towers.text import TextConfig, TextTransformer, causal_mask
from tests.towers._clip_reference import RefText, randomize_

CFG = TextConfig(context_length=12, vocab_size=50, width=32, heads=4, layers=2, output_dim=16)


def _pair(cfg: TextConfig = CFG, seed: int = 0):
    c = cfg
    ref = RefText(c.context_length, c.vocab_size, c.width, c.layers, c.heads, c.output_dim, c.act)
    randomize_(ref, seed)
    ours = TextTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _tokens() -> torch.Tensor:
    # sot=47 ... eot=49 (the largest id), zero padded; the longest prompt ends at position 6
    rows = [[47, 3, 4, 49], [47, 5, 6, 7, 8, 9, 49], [47, 49]]
    out = torch.zeros(len(rows), CFG.context_length, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def test_matches_reference_and_trimming_is_exact():
    ref, ours = _pair()
    tokens = _tokens()
    out = ours(tokens)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, ref(tokens), rtol=1e-5, atol=1e-5)
    # the untrimmed path (full context, as under export) gives the same embedding
    full = ours.forward_tokens(tokens)[torch.arange(3), tokens.argmax(-1)] @ ours.text_projection
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    # so does passing a shorter (already trimmed) sequence
    torch.testing.assert_close(ours(tokens[:, :7]), out, rtol=1e-5, atol=1e-6)


def test_result_is_per_row_independent_of_batch():
    _, ours = _pair(seed=1)
    tokens = _tokens()
    alone = ours(tokens[2:3])  # trimmed to length 2 on its own
    torch.testing.assert_close(ours(tokens)[2:3], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 256])
def test_length_sorted_batches_match_the_reference_in_input_order(monkeypatch, batch: int):
    """Prompts run sorted by length in batches each trimmed to its longest; rows come back in order."""
    import ovss.towers.text as module

    monkeypatch.setattr(module, "TEXT_BATCH", batch)
    ref, ours = _pair(seed=2)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(9, CFG.context_length, dtype=torch.long)
    for i, n in enumerate([5, 2, 9, 3, 5, 12, 2, 7, 4]):  # lengths incl. SOT/EOT, unsorted, with ties
        tokens[i, : n - 1] = torch.randint(1, 47, (n - 1,), generator=gen)
        tokens[i, 0], tokens[i, n - 1] = 47, 49
    torch.testing.assert_close(ours(tokens), ref(tokens), rtol=1e-5, atol=1e-5)


def test_too_long_is_refused():
    _, ours = _pair()
    with pytest.raises(ValueError, match="context_length"):
        ours(torch.arange(13).reshape(1, 13))  # EOT (largest id) at position 12


def test_causal_mask_dtype_device():
    m = causal_mask(3, torch.zeros(1, dtype=torch.bfloat16))
    assert m.dtype == torch.bfloat16
    assert torch.equal(m.isinf(), torch.ones(3, 3, dtype=torch.bool).triu(1))
    assert (m[~m.isinf()] == 0).all()


def test_is_causal_path_equals_the_additive_causal_mask():
    _, ours = _pair(seed=2)
    tokens = _tokens()
    with torch.no_grad():
        x = ours.token_embedding(tokens) + ours.positional_embedding
        masked = ours.ln_final(ours.transformer(x, attn_mask=causal_mask(CFG.context_length, x)))
        torch.testing.assert_close(ours.forward_tokens(tokens), masked, rtol=1e-6, atol=1e-6)


def test_split_qkv_and_bfloat16():
    from ovss.layers.attention import split_in_proj

    _, ours = _pair(seed=2)
    split = TextTransformer(CFG.override("split_qkv=true"))
    split.load_state_dict(split_in_proj(ours.state_dict()), strict=True)
    tokens = _tokens()
    y = ours(tokens)
    assert torch.equal(split(tokens), y)
    y16 = ours.to(torch.bfloat16)(tokens)
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y).norm() / y.norm() < 5e-2


def test_config_validation():
    assert TextConfig.from_json(CFG.to_json()) == CFG
    with pytest.raises(ConfigError, match="heads"):
        TextConfig(width=30, heads=4)


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_runs_the_full_context(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, ours = _pair(seed=3)
    tokens = _tokens()
    path = tmp_path / "text.onnx"
    torch.onnx.export(ours, (tokens,), str(path), dynamo=False, input_names=["tokens"])
    session = ort.InferenceSession(str(path))
    torch.testing.assert_close(
        torch.from_numpy(session.run(None, {"tokens": tokens.numpy()})[0]), ours(tokens).detach(),
        rtol=1e-4, atol=1e-5,
    )
    # the exported graph is not trimmed to this batch: a longer prompt gives the eager result too
    longer = tokens.clone()
    longer[0, :11] = torch.tensor([47, 1, 2, 3, 4, 5, 6, 7, 8, 9, 49])
    torch.testing.assert_close(
        torch.from_numpy(session.run(None, {"tokens": longer.numpy()})[0]), ours(longer).detach(),
        rtol=1e-4, atol=1e-5,
    )


def _prompts(templates: list[list[int]], classes: list[list[int]]) -> torch.Tensor:
    """Rows SOT + template prefix + class + template suffix + EOT, as the embedder builds them."""
    rows = [[47, *pre, *name, *suf, 49] for pre, suf in templates for name in classes]
    out = torch.zeros(len(rows), CFG.context_length, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


TEMPLATES = [([1, 2], [9]), ([1, 2, 3], []), ([4], [9, 8]), ([], [])]  # (before, after) the class
CLASSES = [[10], [11, 12], [10, 13], [14, 15, 16], [10]]  # a repeat, a shared first token


def test_shared_prefix_lengths():
    from ovss.towers.text import shared_prefix_lengths

    rows = [[47, 1, 2, 49, 0], [47, 1, 3, 4, 49], [47, 1, 2, 49, 0], [47, 5, 49, 0, 0], [6, 49, 0, 0, 0]]
    tokens = torch.tensor(rows)
    split = shared_prefix_lengths(tokens, tokens.argmax(-1))
    # rows 0 and 2 are equal: everything before EOT is shared; row 1 shares "47 1"; row 3 "47"; row 4 nothing
    assert split.tolist() == [3, 2, 3, 1, 0]
    one = shared_prefix_lengths(tokens[:1], tokens[:1].argmax(-1))
    assert one.tolist() == [0]


@pytest.mark.parametrize("batch", [1, 3, 256])
def test_shared_prefixes_are_computed_once_and_exact(monkeypatch, batch: int):
    """Template x class prompts share their template's prefix: that path runs, and equals the reference."""
    import ovss.towers.text as module

    monkeypatch.setattr(module, "TEXT_BATCH", batch)
    calls = []
    original = TextTransformer._embed_shared
    spy = lambda self, *a: calls.append(a) or original(self, *a)  # noqa: E731
    monkeypatch.setattr(TextTransformer, "_embed_shared", spy)
    ref, ours = _pair(seed=4)
    tokens = _prompts(TEMPLATES, CLASSES)
    tokens[-1, :3] = torch.tensor([6, 7, 49])  # a row sharing nothing (prefix length 0)
    tokens[-1, 3:] = 0
    out = ours(tokens)
    assert len(calls) == 1
    torch.testing.assert_close(out, ref(tokens), rtol=1e-5, atol=1e-5)
    # zero columns beyond the context (EOTs inside it) change nothing
    wide = torch.cat([tokens, torch.zeros(len(tokens), 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(ours(wide), out, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2
    monkeypatch.setattr(module, "MIN_SHARED", 2.0)  # never share: the length-sorted batches
    torch.testing.assert_close(ours(tokens), out, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2


def test_shared_prefix_gradients_equal_the_plain_path(monkeypatch):
    """CAT-Seg fine-tunes the text tower: gradients through shared prefixes are the plain ones."""
    import ovss.towers.text as module

    _, ours = _pair(seed=5)
    tokens = _prompts(TEMPLATES, CLASSES)
    grads = []
    for min_shared in (0.2, 2.0):
        monkeypatch.setattr(module, "MIN_SHARED", min_shared)
        ours.zero_grad()
        (ours(tokens) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters()})
    for name in grads[0]:
        scale = float(grads[1][name].abs().max())  # sums of thousands of terms: rounding scales with them
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_shared_prefixes_in_bfloat16_stay_close():
    _, ours = _pair(seed=6)
    tokens = _prompts(TEMPLATES, CLASSES)
    y = ours(tokens)
    y16 = ours.to(torch.bfloat16)(tokens)
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y).norm() / y.norm() < 5e-2


def test_real_templates_share_most_tokens():
    """CLIP tokenizer, ImageNet templates, 40 COCO-Stuff names: under half of the tokens are computed."""
    from pathlib import Path

    import ovss
    from ovss.towers.text import _masked_prefixes, shared_prefix_lengths
    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    names = (Path(ovss.__file__).parent / "assets" / "classes" / "coco171.txt").read_text().split("\n")[:40]
    tokens = get_tokenizer()([t.format(n) for t in get_templates("imagenet") for n in names])
    eot = tokens.argmax(-1)
    split = shared_prefix_lengths(tokens, eot)
    distinct = int((torch.unique(_masked_prefixes(tokens, split), dim=0) >= 0).sum())
    computed = int((eot + 1 - split).sum()) + distinct
    assert computed < 0.5 * int((eot + 1).sum())
