"""Light CNN-9 (Net B): MFM and the DAL head against hand-computed tensors, shapes, transfer."""
from __future__ import annotations

import pytest
import torch

from ferkit.models import create_model, list_models
from ferkit.models.lightcnn import (DoubleActivation, LightCNN9, MFMConv2d, MFMLinear, feature_side, mfm,
                                    transfer_identity_weights)


def test_registered() -> None:
    assert {"lightcnn9", "netb"} <= set(list_models())
    assert create_model("netb", num_classes=7, input_size=32, width=0.25).has_identity


def test_mfm_hand_computed() -> None:
    # channels [1, 5 | 3, 2] -> max(1,3)=3, max(5,2)=5; second pixel [-1, 0 | -4, 7] -> -1, 7
    x = torch.tensor([[[[1.0, -1.0]], [[5.0, 0.0]], [[3.0, -4.0]], [[2.0, 7.0]]]])  # [1, 4, 1, 2]
    out = mfm(x)
    assert out.shape == (1, 2, 1, 2)
    assert torch.equal(out, torch.tensor([[[[3.0, -1.0]], [[5.0, 7.0]]]]))
    with pytest.raises(ValueError):
        mfm(torch.zeros(1, 3, 2, 2))


def test_mfm_conv_and_linear_hand_computed() -> None:
    conv = MFMConv2d(1, 1, 1)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        conv.conv.bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[[1.0, -2.0]]]])
    # channel a = 2x -> [2, -4]; channel b = -x + 1 -> [0, 3]; max -> [2, 3]
    assert torch.equal(conv(x), torch.tensor([[[[2.0, 3.0]]]]))

    lin = MFMLinear(2, 1)
    with torch.no_grad():
        lin.fc.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        lin.fc.bias.zero_()
    # [3, 4]: a = 7, b = -1 -> 7 ; [1, -5]: a = -4, b = 6 -> 6
    assert torch.equal(lin(torch.tensor([[3.0, 4.0], [1.0, -5.0]])), torch.tensor([[7.0], [6.0]]))


def test_dal_hand_computed() -> None:
    dal = DoubleActivation(2, 2)
    with torch.no_grad():
        dal.ip1_a.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        dal.ip1_a.bias.copy_(torch.tensor([0.0, -10.0]))
        dal.ip1_b.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 1.0]]))
        dal.ip1_b.bias.copy_(torch.tensor([0.0, 0.0]))
    x = torch.tensor([[2.0, 3.0], [-4.0, -1.0]])
    # X1 = [[2, -7], [-4, -11]]; X2 = [[-2, 5], [4, -5]]
    # eq. 6 max -> [[2, 5], [4, -5]]; eq. 5 ReLU -> [[2, 5], [4, 0]]
    assert torch.equal(dal.maxout(x), torch.tensor([[2.0, 5.0], [4.0, -5.0]]))
    assert torch.equal(dal(x), torch.tensor([[2.0, 5.0], [4.0, 0.0]]))


def test_dal_head_forward_is_ip2_of_relu_max() -> None:
    model = create_model("netb", num_classes=7, head="dal", input_size=32, width=0.25).eval()
    x = torch.randn(3, 1, 32, 32)
    out = model(x)
    h = torch.flatten(model.features(x), 1)
    x1, x2 = model.dal.ip1_a(h), model.dal.ip1_b(h)
    expected = model.ip2(torch.clamp(torch.maximum(x1, x2), min=0))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.identity, torch.maximum(x1, x2))


@pytest.mark.parametrize("size,width", [(128, 1.0), (144, 0.25), (96, 0.5), (64, 0.5), (48, 0.5), (40, 0.25)])
@pytest.mark.parametrize("head", ["fc", "dal"])
def test_shapes(size: int, width: float, head: str) -> None:
    model = create_model("netb", num_classes=7, head=head, input_size=size, width=width).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.logits.shape == (2, 7)
    assert out.identity.shape == (2, 256)
    assert out.embedding.shape == (2, 256)
    assert model.flat_features == round(128 * width) * feature_side(size) ** 2


def test_paper_layout_at_128() -> None:
    model = create_model("lightcnn9", num_classes=10, input_size=128)
    # the last conv block gives 8x8x128 and fc1 is 512 -> MFM 256 (model-details)
    assert feature_side(128) == 8 and model.flat_features == 8 * 8 * 128
    assert model.fc1.fc.out_features == 512 and model.fc1.out_features == 256
    convs = [m for m in model.features if isinstance(m, MFMConv2d)]
    assert [(m.conv.kernel_size[0], m.conv.out_channels) for m in convs] == [
        (5, 96), (1, 96), (3, 192), (1, 192), (3, 384), (1, 384), (3, 256), (1, 256), (3, 256)]


def test_wrong_input_size_is_a_clear_error() -> None:
    model = create_model("netb", input_size=48, width=0.25)
    with pytest.raises(ValueError, match="48x48"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="head"):
        LightCNN9(7, head="conv")


@pytest.mark.parametrize("head", ["fc", "dal"])
def test_transfer_copies_trunk_and_fc1(head: str) -> None:
    identity = create_model("lightcnn9", num_classes=11, input_size=32, width=0.25).eval()
    expr = create_model("netb", num_classes=7, head=head, input_size=32, width=0.25).eval()
    fresh_classifier = (expr.fc2 if head == "fc" else expr.ip2).weight.clone()
    loaded = transfer_identity_weights(expr, identity.state_dict())
    assert any(k.startswith("features.") for k in loaded)
    for name, tensor in identity.state_dict().items():
        if name.startswith("features."):
            assert torch.equal(expr.state_dict()[name], tensor), name
    # the classifier is replaced (7 outputs, left as initialised)
    assert torch.equal((expr.fc2 if head == "fc" else expr.ip2).weight, fresh_classifier)
    # DAL's maxout of the two IP1 halves is exactly the identity net's MFM fc1: same identity feature
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(expr(x).identity, identity(x).identity)


def test_transfer_shape_mismatch_says_what_to_do() -> None:
    identity = create_model("lightcnn9", num_classes=5, input_size=32, width=0.5)
    expr = create_model("netb", num_classes=7, input_size=32, width=0.25)
    with pytest.raises(ValueError, match="same input_size"):
        transfer_identity_weights(expr, identity.state_dict())
