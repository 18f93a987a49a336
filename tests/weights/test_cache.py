from __future__ import annotations

import dataclasses
import hashlib

import pytest

from ovss.errors import DigestMismatchError, WeightsNotFoundError
from ovss.weights import cache, resolve
from ovss.weights.registry import get_weight_spec


def test_offline_and_missing_is_one_line_with_the_fix(home):
    spec = get_weight_spec("san-vit-b16")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve.fetch_source(spec)
    msg = str(info.value)
    assert "\n" not in msg
    assert "OVSS_OFFLINE=1" in msg and "ovss download san-vit-b16" in msg
    assert "san_vit_b_16.pth" in msg and str(home / "weights") in msg


def test_manual_download_weights_say_where(home):
    with pytest.raises(
        WeightsNotFoundError, match="download it from https://github.com/xb534/SED.*ovss convert"
    ):
        resolve.fetch_source(get_weight_spec("sed-convnext-b"))


def test_digest_mismatch_refuses_the_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"not the weights")
    good = hashlib.sha256(b"not the weights").hexdigest()
    assert resolve.verify_digest(f, good, "x") == good
    assert resolve.verify_digest(f, None, "x") == good
    with pytest.raises(DigestMismatchError, match="the file is not used"):
        resolve.verify_digest(f, "0" * 64, "x")
    spec = dataclasses.replace(get_weight_spec("san-vit-b16"), sha256="0" * 64)
    with pytest.raises(DigestMismatchError):
        cache.convert_checkpoint(spec, f, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_local_file(home):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        cache.load_model("san-vit-b16", weights=home / "nope.pth")
