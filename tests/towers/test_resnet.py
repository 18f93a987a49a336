"""detectron2-layout ResNet tower: shapes, FrozenBN semantics, stride placement, key names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import ConfigError
from ovss.towers.resnet import Bottleneck, FrozenBatchNorm2d, ResNet, ResNetConfig, resnet101_d2


def _tiny(**kw) -> ResNetConfig:
    return ResNetConfig(depths=(1, 2, 1), stem_channels=8, res2_channels=16, width_per_group=4, **kw)


def test_stage_shapes_and_strides() -> None:
    torch.manual_seed(0)
    out = ResNet(_tiny()).eval()(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 16, 16, 24),
        "res3": (2, 32, 8, 12),
        "res4": (2, 64, 4, 6),
    }


def test_frozen_bn_is_eval_batch_norm_with_buffers_only() -> None:
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(5, eps=1e-5)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 3, 4)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)
    bn.train()
    torch.testing.assert_close(bn(x), ref, rtol=1e-6, atol=1e-6)
    assert list(bn.parameters()) == []
    assert sorted(bn.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    # hand-checkable: mean 1, var 4 - eps, weight 2, bias 3 -> (x - 1) / 2 * 2 + 3 = x + 2
    bn2 = FrozenBatchNorm2d(1, eps=1e-5)
    bn2.running_mean.fill_(1.0)
    bn2.running_var.fill_(4.0 - 1e-5)
    bn2.weight.fill_(2.0)
    bn2.bias.fill_(3.0)
    y = torch.tensor([[[[0.0, 1.0, 5.0]]]])
    torch.testing.assert_close(bn2(y), y + 2.0)


@pytest.mark.parametrize("in_1x1", [True, False])
def test_stride_in_1x1_moves_the_stride(in_1x1: bool) -> None:
    net = ResNet(_tiny(stride_in_1x1=in_1x1))
    first = net.res3[0]
    assert first.conv1.stride == ((2, 2) if in_1x1 else (1, 1))
    assert first.conv2.stride == ((1, 1) if in_1x1 else (2, 2))
    assert first.shortcut is not None and first.shortcut.stride == (2, 2)
    assert net.res3[1].shortcut is None


def test_identity_block_with_zero_last_norm_is_relu() -> None:
    cfg = _tiny()
    block = Bottleneck(16, 16, 4, 1, cfg).eval()
    block.conv3.norm.weight.zero_()
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(block(x), F.relu(x))


def test_detectron2_key_names_and_bn_variant() -> None:
    keys = set(ResNet(_tiny()).state_dict())
    assert {
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.bias",
        "res4.0.conv3.norm.weight",
    } <= keys
    bn = ResNet(_tiny(norm="bn"))
    assert isinstance(bn.res2[0].conv1.norm, torch.nn.BatchNorm2d)
    assert "res2.0.conv1.norm.num_batches_tracked" in bn.state_dict()
    assert resnet101_d2().channels == (256, 512, 1024) and resnet101_d2().depths == (3, 4, 23)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="depths"):
        ResNetConfig(depths=(3, 0, 2))
    with pytest.raises(ConfigError, match="norm"):
        ResNetConfig(norm="gn")  # type: ignore[arg-type]
    assert ResNetConfig.from_json(_tiny().to_json()) == _tiny()
