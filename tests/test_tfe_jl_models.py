"""TFE-JL architectures checked against the paper's definitions (section 3.1/3.2, model-details)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.losses.contrastive import pair_verification_terms, verification_loss
from ferkit.models import create_model
from ferkit.models.blocks import IdentityBlock, ProjectionBlock
from ferkit.models.tfe_jl import RESNET_BLOCKS, DeepId, ResNetFer, TfeJl


def _blocks(model: ResNetFer) -> list[tuple[str, int]]:
    return [("project" if isinstance(b, ProjectionBlock) else "identity", b.out_channels) for b in model.blocks]


def _conv3x3_in_blocks(model: nn.Module) -> int:
    return sum(1 for b in model.blocks for m in b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _bn_params(c: int) -> int:
    return 2 * c


def _expected_resnet_params(blocks, num_classes: int, in_channels: int = 1) -> int:
    """Hand count from the block list: convs without bias (BN follows), 2 params per BN channel."""
    total = _conv_params(in_channels, 16, 3) + _bn_params(16)
    width = 16
    for kind, n in blocks:
        total += _conv_params(width, n, 3) + _bn_params(n) + _conv_params(n, n, 3) + _bn_params(n)
        if kind == "project":
            total += _conv_params(width, n, 1) + _bn_params(n)
        width = n
    return total + width * num_classes + num_classes


def test_resnet18_and_resnet12_block_lists_follow_section_3_1() -> None:
    r18, r12 = create_model("resnet18_fer"), create_model("resnet12_fer")
    assert _blocks(r18) == [("identity", 16)] * 3 + [("project", 32), ("identity", 32), ("identity", 32),
                                                      ("project", 64), ("identity", 64), ("identity", 64)]
    # "removing four identity building blocks when n = 16, 16, 32, 64 and adding one project block when n = 16"
    removed = list(_blocks(r18))
    for n in (16, 16, 32, 64):
        removed.remove(("identity", n))
    assert sorted(_blocks(r12)) == sorted(removed + [("project", 16)])
    assert _blocks(r12)[0] == ("project", 16)
    # depth = 3x3 convolutions of the residual blocks
    assert _conv3x3_in_blocks(r18) == 18 and _conv3x3_in_blocks(r12) == 12
    # stride 2 only in the projection blocks, whose shortcut is a 1x1 stride-2 convolution
    for model in (r18, r12):
        for b in model.blocks:
            if isinstance(b, ProjectionBlock):
                conv = b.shortcut[0]
                assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
            else:
                assert isinstance(b, IdentityBlock) and b.branch1[0].stride == (1, 1)
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name,depth,classes", [("resnet18_fer", 18, 8), ("resnet12_fer", 12, 7)])
def test_resnet_param_count_matches_hand_count(name: str, depth: int, classes: int) -> None:
    model = create_model(name, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == _expected_resnet_params(RESNET_BLOCKS[depth], classes)


@pytest.mark.parametrize("name", ["resnet18_fer", "resnet12_fer"])
def test_resnet_shapes_gradients_and_gap_feature(name: str) -> None:
    model = create_model(name, num_classes=8)
    x = torch.randn(3, 1, 48, 48, requires_grad=True)
    out = model(x)
    assert out.logits.shape == (3, 8) and out.embedding.shape == (3, 64)
    # the FC reads exactly the 64-d GAP feature
    torch.testing.assert_close(out.logits, model.fc(out.embedding))
    out.logits.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    # channels_last gives the same function
    model.eval()
    ref = model(x.detach()).logits
    cl = model.to(memory_format=torch.channels_last)(x.detach().contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


def test_resnet_feature_map_sizes() -> None:
    r18, r12 = create_model("resnet18_fer"), create_model("resnet12_fer")
    x = torch.randn(1, 1, 48, 48)
    sizes18, sizes12 = [], []
    for model, sizes in ((r18, sizes18), (r12, sizes12)):
        h = F.relu(model.stem(x))
        for b in model.blocks:
            h = b(h)
            sizes.append(h.shape[-1])
    assert sizes18 == [48, 48, 48, 24, 24, 24, 12, 12, 12]
    assert sizes12 == [24, 24, 12, 12, 6, 6]


def test_deepid_two_branch_sum_matches_manual_layers() -> None:
    model = create_model("deepid", num_classes=5).eval()
    x = torch.randn(2, 1, 48, 48)
    # manual forward with the model's own layers, written out from the DeepID2 definition
    h = F.max_pool2d(F.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias)), 2)
    assert h.shape[-1] == 22
    h = F.max_pool2d(F.relu(F.conv2d(h, model.conv2.weight, model.conv2.bias)), 2, stride=1)
    assert h.shape[-1] == 19
    pool3 = F.max_pool2d(F.relu(F.conv2d(h, model.conv3.weight, model.conv3.bias)), 2)
    assert pool3.shape[1:] == (60, 8, 8)
    conv4 = F.relu(F.conv2d(pool3, model.conv4.weight, model.conv4.bias))
    assert conv4.shape[1:] == (80, 7, 7)
    z = F.relu(pool3.flatten(1) @ model.fc_pool3.weight.T + model.fc_pool3.bias
               + conv4.flatten(1) @ model.fc_conv4.weight.T + model.fc_conv4.bias)
    out = model(x)
    torch.testing.assert_close(out.identity, z)
    torch.testing.assert_close(out.logits, z @ model.classifier.weight.T + model.classifier.bias)
    assert out.identity.shape == (2, 160) and out.identity_logits is out.logits


def test_deepid_dropout_and_gradients() -> None:
    model = create_model("deepid", num_classes=4)
    assert model.dropout.p == pytest.approx(0.4)
    x = torch.randn(4, 1, 48, 48, requires_grad=True)
    out = model(x)
    (out.logits.sum() + out.identity.sum()).backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="48x48"):
        model(torch.randn(1, 1, 64, 64))


def test_tfe_feature_is_bn_of_each_branch_then_concat() -> None:
    model = create_model("tfe_jl", num_classes=8)
    assert isinstance(model, TfeJl) and model.has_identity
    # known running statistics, eval mode: BN(z) = (z - mean) / sqrt(var + eps) * gamma + beta
    g = torch.Generator().manual_seed(1)
    for bn, dim in ((model.bn_identity, 160), (model.bn_emotion, 64)):
        bn.running_mean.copy_(torch.randn(dim, generator=g))
        bn.running_var.copy_(torch.rand(dim, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(dim, generator=g))
        bn.bias.data.copy_(torch.randn(dim, generator=g))
    model.eval()
    x = torch.randn(3, 1, 48, 48)
    out = model(x)
    z_i = model.identity_net.features(x)
    z_e = model.emotion_net.features(x)

    def bn(z: torch.Tensor, m: nn.BatchNorm1d) -> torch.Tensor:
        return (z - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    tfe = torch.cat([bn(z_i, model.bn_identity), bn(z_e, model.bn_emotion)], dim=1)
    assert tfe.shape == (3, 224)
    torch.testing.assert_close(out.embedding, tfe)
    torch.testing.assert_close(out.identity, z_i)
    torch.testing.assert_close(out.logits, tfe @ model.classifier.weight.T + model.classifier.bias)


def test_tfe_jl_gradients_reach_both_branches() -> None:
    model = create_model("tfe_jl", num_classes=8, emotion_depth=12)
    out = model(torch.randn(4, 1, 48, 48))
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert model.identity_net.conv1.weight.grad.abs().sum() > 0
    assert model.emotion_net.stem[0].weight.grad.abs().sum() > 0


def test_load_branches_copies_pretrained_weights_and_rejects_wrong_architecture() -> None:
    deepid = create_model("deepid", num_classes=11)
    resnet = create_model("resnet18_fer", num_classes=8)
    joint = create_model("tfe_jl", num_classes=8)
    joint.load_branches(deepid.state_dict(), resnet.state_dict())
    for k, v in deepid.state_dict().items():
        if not k.startswith("classifier."):
            torch.testing.assert_close(joint.identity_net.state_dict()[k], v)
    for k, v in resnet.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(joint.emotion_net.state_dict()[k], v)
    with pytest.raises(RuntimeError):
        joint.load_branches(emotion_state=create_model("resnet12_fer").state_dict())


def test_start_as_emotion_net_reproduces_the_emotion_nets_logits() -> None:
    torch.manual_seed(0)
    deepid = create_model("deepid", num_classes=11)
    resnet = create_model("resnet18_fer", num_classes=8)
    with torch.no_grad():  # non-trivial BN statistics so an identity-BN shortcut would not pass
        for m in resnet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    joint = create_model("tfe_jl", num_classes=8)
    joint.load_branches(deepid.state_dict(), resnet.state_dict())
    x = torch.randn(64, 1, 48, 48)
    joint.start_as_emotion_net(resnet.fc.weight, resnet.fc.bias, x)
    joint.eval(), resnet.eval()
    with torch.no_grad():
        torch.testing.assert_close(joint(x[:8]).logits, resnet(x[:8]).logits, atol=1e-4, rtol=1e-4)
    assert joint.classifier.weight[:, :160].abs().max() == 0  # identity half starts silent...
    joint.train()
    joint(x).logits.sum().backward()
    assert joint.classifier.weight.grad[:, :160].abs().max() > 0  # ...but learns


def test_verification_loss_follows_deepid2_equation() -> None:
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1, 2])
    m = 2.0
    pos_sum, neg_sum, n_pos, n_neg = pair_verification_terms(f, y, m)
    # pairs: (0,1) same: 1/2*25; (0,2) diff d=0.5: 1/2*(1.5)^2; (0,3) d=10: 0; (1,2) d=4.5: 0;
    # (1,3) d=sqrt(49+16): 0; (2,3) d>2: 0
    assert (n_pos, n_neg) == (1, 5)
    assert float(pos_sum) == pytest.approx(12.5)
    assert float(neg_sum) == pytest.approx(0.5 * 1.5 ** 2)
    assert float(verification_loss(f, y, m)) == pytest.approx(12.5 + 0.5 * 1.5 ** 2 / 5)
    # gradient is finite even for identical features of one identity
    g = torch.zeros(2, 3, requires_grad=True)
    verification_loss(g, torch.tensor([0, 0]), 1.0).backward()
    assert torch.isfinite(g.grad).all()


def test_registered_models_are_ferModels_with_flags() -> None:
    assert not create_model("resnet18_fer").has_identity
    assert create_model("deepid").has_identity and isinstance(create_model("deepid"), DeepId)
    assert create_model("tfe_jl").has_identity
