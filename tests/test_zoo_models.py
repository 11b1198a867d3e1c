"""Model zoo: parameter counts against the papers (or derived by hand where a paper gives none),
output shapes, and the multi-task parameter split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchmoo.zoo import models as M
from torchmoo.zoo.models import count_parameters


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    "make, expected",
    [
        # Ma et al. supplement 2.3: "The network contains 22,350 trainable parameters."
        (lambda: M.MultiLeNet(), 22_350),
        # ParetoMTL's 36 x 36 LeNet (conv1 9x9): 820 + 5,020 + (500 * 50 + 50) + 2 * 510 = 31,910
        (lambda: M.MultiLeNet(image_size=36), 31_910),
        # Ma et al. supplement 2.2: "which has 1500 parameters"
        (lambda: M.MultiLeNetSubset(), 1_500),
        # Ma et al. supplement 2.4: "This network contains 158,598 trainable parameters"
        (lambda: M.CensusMLP(), 158_598),
        # MT-SGD supplement 2.1.3: "(139,015 params)"
        (lambda: M.SarcosMLP(), 139_015),
        # SIMOL 5.1, 1 -> 32 -> 32 -> 1: 64 + 1,056 + 33 = 1,153
        (lambda: M.SinusoidMLP(), 1_153),
        # Finn et al.'s 1 -> 40 -> 40 -> 1: 80 + 1,640 + 41 = 1,761
        (lambda: M.SinusoidMLP((40, 40)), 1_761),
        # Conv-4-64 on RGB: (3*64*9 + 64) + 128 + 3 * ((64*64*9 + 64) + 128) = 113,088
        (lambda: M.Conv4(), 113_088),
        # rotation head: 64*128*9 + 2*128 + 128*256*9 + 2*256 + (256*4 + 4) = 370,436
        (lambda: M.RotationHead(), 370_436),
        # patch location head on 64-d patch features: 128*256 + 2*256 + (256*8 + 8) = 35,336
        (lambda: M.RelativePatchLocationHead(), 35_336),
        # cosine classifier over 1,600-d features, 64 classes, learned scale: 64 * 1600 + 1
        (lambda: M.CosineClassifier(1600, 64), 102_401),
        # Ma et al. supplement 2.5 (UTKFace): "The network contains 11,180,616 trainable parameters."
        (lambda: M.MultiHeadResNet18((1, 2, 5)), 11_180_616),
        # ResNet-18 without its classifier: 11,689,512 (torchvision, 1000 classes) - 513,000
        (lambda: M.ResNet18(), 11_176_512),
    ],
)
def test_parameter_counts(make, expected):
    assert count_parameters(make()) == expected


def test_wrn28_10_parameter_count():
    # By hand: stem 3*16*9 = 432; group 1 (16 -> 160): first block 32 + 23,040 + 320 + 230,400 + 2,560
    # (1x1 shortcut) = 256,352, three more 2 * (320 + 230,400) = 461,440 each; group 2 (160 -> 320):
    # 1,434,560 + 3 * 1,844,480; group 3 (320 -> 640): 5,736,320 + 3 * 7,375,360; final BN 1,280.
    # Total 36,472,784; with a 10-class classifier 36,479,194, the usual WRN-28-10 CIFAR-10 figure.
    net = M.wrn28_10()
    assert count_parameters(net) == 36_472_784
    assert count_parameters(net) + 640 * 10 + 10 == 36_479_194
    assert net.out_features == 640


def test_conv4_self_supervised_is_backbone_plus_heads():
    net = M.Conv4SelfSupervised(num_classes=64, image_size=84)
    # 113,088 + cosine over 5*5*64 = 1,600 features (102,401) + 370,436 + 35,336
    assert count_parameters(net) == 113_088 + 102_401 + 370_436 + 35_336


# ------------------------------------------------------------------------------------------- shapes
def test_lenet_shapes_and_heads():
    for net, side in ((M.MultiLeNet(), 28), (M.MultiLeNet(image_size=36), 36), (M.MultiLeNetSubset(), 14)):
        out = net(torch.randn(3, 1, side, side))
        assert isinstance(out, list) and len(out) == 2
        assert all(o.shape == (3, 10) for o in out)


def test_mlp_shapes():
    census = M.CensusMLP(in_features=20)
    out = census(torch.randn(5, 20))
    assert len(out) == 3 and all(o.shape == (5, 2) for o in out)
    sarcos = M.SarcosMLP()
    out = sarcos(torch.randn(4, 21))
    assert len(out) == 7 and all(o.shape == (4,) for o in out)
    assert M.SinusoidMLP()(torch.randn(6, 1)).shape == (6, 1)


def test_sarcos_heads_equal_one_7_output_layer():
    # the seven 256 -> 1 heads are the rows of the paper's 256 x 7 output layer
    net = M.SarcosMLP()
    x = torch.randn(4, 21)
    z = net.features(x)
    W = torch.cat([h.weight for h in net.heads])
    b = torch.cat([h.bias for h in net.heads])
    torch.testing.assert_close(torch.stack(net(x), dim=1), z @ W.T + b)


def test_conv4_feature_sizes():
    # MiniImageNet 84 x 84 -> 5 x 5 x 64 = 1,600; CIFAR-FS 32 x 32 -> 2 x 2 x 64 = 256 (PSST B.1)
    net = M.Conv4().eval()
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 1600)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 256)
    assert net.output_side(84) == 5 and net.output_side(24) == 1


def test_conv4_self_supervised_forward():
    net = M.Conv4SelfSupervised(num_classes=5, image_size=32, patch_size=24)
    images = torch.randn(3, 3, 32, 32)
    patches = torch.randn(3, 9, 3, 24, 24)
    cls, rot, loc = net(images, patches)
    assert cls.shape == (3, 5) and rot.shape == (3, 4) and loc.shape == (3, 8, 8)
    assert len(net(images)) == 2
    targets = M.RelativePatchLocationHead.targets(3)
    loss = nn.functional.cross_entropy(loc.reshape(-1, 8), targets.reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in net.heads[2].parameters())
    with pytest.raises(ValueError, match=r"\(B, 9, C, p, p\)"):
        net(images, patches[:, :8])


def test_patch_location_pairs_center_with_each_neighbour():
    head = M.RelativePatchLocationHead(feature_dim=4, hidden=8).eval()
    feats = torch.randn(2, 9, 4)
    logits = head(feats)
    for k, p in enumerate(head.NEIGHBOURS):
        torch.testing.assert_close(logits[:, k], head.pair_logits(feats[:, 4], feats[:, p]))


def test_cosine_classifier_is_scaled_cosine():
    clf = M.CosineClassifier(6, 4, scale=7.0)
    x = torch.randn(5, 6)
    expected = 7.0 * torch.nn.functional.cosine_similarity(x.unsqueeze(1), clf.weight.unsqueeze(0), dim=2)
    torch.testing.assert_close(clf(x), expected)
    # invariant to the norm of the input
    torch.testing.assert_close(clf(3.5 * x), clf(x))
    fixed = M.CosineClassifier(6, 4, learn_scale=False)
    assert count_parameters(fixed) == 24
    fixed.set_prototypes(torch.eye(6)[:3])
    assert fixed(torch.eye(6)).argmax(1)[:3].tolist() == [0, 1, 2]


def test_resnet18_tiny_forward():
    net = M.MultiHeadResNet18((1, 2, 5)).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in out] == [(2, 1), (2, 2), (2, 5)]
    small = M.MultiHeadResNet18((10, 10), in_channels=1, stem="cifar").eval()
    with torch.no_grad():
        assert [o.shape for o in small(torch.randn(1, 1, 8, 8))] == [(1, 10), (1, 10)]


def test_wide_resnet_tiny_forward():
    net = M.WideResNet(depth=10, widen_factor=2, strides=(2, 2, 2), num_classes=7).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert net.feature_map(x).shape == (2, 128, 2, 2)
        assert net(x).shape == (2, 7)
    standard = M.WideResNet(depth=10, widen_factor=1).eval()
    with torch.no_grad():
        assert standard.feature_map(torch.randn(1, 3, 8, 8)).shape == (1, 64, 2, 2)


# ------------------------------------------------------------------------------- multi-task split
@pytest.mark.parametrize(
    "net", [M.MultiLeNet(), M.MultiLeNetSubset(), M.CensusMLP(in_features=10), M.SarcosMLP(), M.Conv4SelfSupervised(5, image_size=32)],
    ids=lambda n: type(n).__name__,
)
def test_shared_and_task_parameters_partition_the_model(net):
    shared = {id(p) for p in net.shared_parameters()}
    tasks = [{id(p) for p in net.task_parameters(i)} for i in range(net.num_tasks)]
    everything = {id(p) for p in net.parameters()}
    assert shared and all(tasks)
    assert set().union(shared, *tasks) == everything
    assert sum(len(t) for t in tasks) + len(shared) == len(everything)  # disjoint


@pytest.mark.parametrize(
    "net, x",
    [(M.MultiLeNet(), (4, 1, 28, 28)), (M.MultiLeNetSubset(), (4, 1, 14, 14)), (M.CensusMLP(in_features=10), (4, 10)),
     (M.SarcosMLP(hidden=(8,)), (4, 21))],
    ids=["MultiLeNet", "MultiLeNetSubset", "CensusMLP", "SarcosMLP"],
)
def test_task_loss_reaches_only_its_head(net, x):
    # every task, not only the last one: forward returning one head's output twice would pass for one task
    x = torch.randn(*x)
    z = net.features(x)
    for i in range(net.num_tasks):
        net.zero_grad(set_to_none=True)
        out = net(x)
        torch.testing.assert_close(out[i], net.heads[i](z).reshape(out[i].shape))
        out[i].sum().backward()
        for j in range(net.num_tasks):
            assert all((p.grad is not None) == (j == i) for p in net.task_parameters(j)), (i, j)
        assert all(p.grad is not None for p in net.shared_parameters())


def test_forward_is_the_documented_architecture():
    # parameter counts cannot see activations, pooling or their order: compare with the layers written out
    F = nn.functional
    net = M.MultiLeNet()
    x = torch.randn(3, 1, 28, 28)
    c1w, c1b, c2w, c2b, fw, fb = net.shared_parameters()
    z = F.max_pool2d(F.relu(F.conv2d(x, c1w, c1b)), 2)
    z = F.max_pool2d(F.relu(F.conv2d(z, c2w, c2b)), 2)
    z = F.relu(F.linear(z.flatten(1), fw, fb))
    for i, out in enumerate(net(x)):
        torch.testing.assert_close(out, F.linear(z, *net.task_parameters(i)))
    sub = M.MultiLeNetSubset()
    x = torch.randn(3, 1, 14, 14)
    cw, cb, fw, fb = sub.shared_parameters()
    z = F.relu(F.linear(F.max_pool2d(F.relu(F.conv2d(x, cw, cb, stride=2)), 2).flatten(1), fw, fb))
    for i, out in enumerate(sub(x)):
        torch.testing.assert_close(out, F.linear(z, *sub.task_parameters(i)))
    census = M.CensusMLP(in_features=10)
    x = torch.randn(5, 10)
    w1, b1, w2, b2 = census.shared_parameters()
    z = F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2))
    for i, out in enumerate(census(x)):
        torch.testing.assert_close(out, F.linear(z, *census.task_parameters(i)))
    sin = M.SinusoidMLP()
    x = torch.randn(6, 1)
    w1, b1, w2, b2, w3, b3 = sin.parameters()
    torch.testing.assert_close(sin(x), F.linear(F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)), w3, b3))


def test_bad_arguments():
    net = M.MultiLeNet()
    with pytest.raises(ValueError, match="out of range"):
        net.task_parameters(2)
    with pytest.raises(TypeError, match="int"):
        net.task_parameters(1.0)
    with pytest.raises(ValueError, match="too small"):
        M.MultiLeNet(image_size=10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        M.WideResNet(depth=27)
    with pytest.raises(ValueError, match="stem"):
        M.ResNet18(stem="tiny")
    with pytest.raises(ValueError, match="at least 1"):
        M.MultiHeadMLP(4, (0,), (1,))
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        M.CosineClassifier(6, 2)(torch.randn(3, 5))


# ------------------------------------------------------------------------ layers written out, checks
def test_count_parameters_counts_frozen_ones_only_when_asked():
    net = M.MultiLeNetSubset()
    for p in net.trunk.parameters():
        p.requires_grad_(False)
    assert count_parameters(net) == 2 * 210  # the two heads
    assert count_parameters(net, trainable_only=False) == 1_500
    bn = nn.BatchNorm2d(4)  # running statistics are buffers, not parameters
    assert count_parameters(bn) == count_parameters(bn, trainable_only=False) == 8


def test_argument_checks_at_the_edges():
    net = M.MultiLeNet()
    with pytest.raises(ValueError, match="out of range"):
        net.task_parameters(-1)  # not Python's "last head"
    with pytest.raises(TypeError, match="int"):
        net.task_parameters(True)
    # 7 x 7 is the smallest input of the subset LeNet: conv 5 stride 2 -> 2 x 2, pool -> 1 x 1
    assert M.MultiLeNetSubset(image_size=7)(torch.randn(2, 1, 7, 7))[0].shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        M.MultiLeNetSubset(image_size=6)
    with pytest.raises(ValueError, match="at least 1"):
        M.MultiLeNet(num_tasks=0)
    with pytest.raises(ValueError, match="at least one head"):
        M.MultiTaskModel(nn.Identity(), [])
    with pytest.raises(ValueError, match="at least one size"):
        M.MultiHeadMLP(4, (), (1,))
    with pytest.raises(TypeError, match="int"):
        M.CensusMLP(num_tasks=2.0)
    with pytest.raises(TypeError, match="must be an int"):
        M.MultiLeNetSubset(image_size=14.0)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        M.WideResNet(depth=4)  # 6 * 0 + 4: no block at all
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        M.WideResNet(depth=10, widen_factor=1, dropout=1.0)
    with pytest.raises(ValueError, match="strides"):
        M.WideResNet(depth=10, widen_factor=1, strides=(1, 2, 3))
    for scale in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale"):
            M.CosineClassifier(4, 2, scale=scale)
    with pytest.raises(ValueError, match="at least 16"):
        M.Conv4SelfSupervised(5, image_size=15, patch_size=24)


def test_sarcos_outputs_keep_the_batch_dim():
    out = M.SarcosMLP(hidden=(8,))(torch.randn(1, 21))
    assert [o.shape for o in out] == [(1,)] * 7


def test_cosine_classifier_prototypes_and_fixed_scale():
    clf = M.CosineClassifier(3, 2, scale=5.0, learn_scale=False)
    assert "scale" in dict(clf.named_buffers()) and clf.state_dict()["scale"] == 5.0
    clf.set_prototypes(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64))
    assert clf.weight.dtype == torch.float32 and clf.weight.shape == (3, 3)
    # the class weights are normalized per class (row): the prototypes' lengths do not matter
    torch.testing.assert_close(clf(torch.eye(3)), 5.0 * torch.eye(3))
    with pytest.raises(ValueError, match=r"\(num_classes, 3\)"):
        clf.set_prototypes(torch.randn(4, 2))


def test_conv4_is_conv_bn_relu_pool():
    F = nn.functional
    net = M.Conv4(in_channels=2, channels=(3, 4), flatten=False).train()
    x = torch.randn(5, 2, 9, 9)
    z = x
    for conv, bn in zip([m for m in net.blocks if isinstance(m, nn.Conv2d)],
                        [m for m in net.blocks if isinstance(m, nn.BatchNorm2d)]):
        assert conv.padding == (1, 1) and conv.kernel_size == (3, 3)
        z = F.conv2d(z, conv.weight, conv.bias, padding=1)
        z = F.batch_norm(z, None, None, bn.weight, bn.bias, training=True)
        z = F.max_pool2d(F.relu(z), 2)
    torch.testing.assert_close(net(x), z)
    assert z.shape == (5, 4, 2, 2) and net.output_side(9) == 2


def test_conv4_self_supervised_heads_see_the_right_inputs():
    F = nn.functional
    net = M.Conv4SelfSupervised(num_classes=5, image_size=32, patch_size=16, channels=(4, 4, 4, 4),
                                rotation_channels=(6, 8), location_hidden=10, scale=3.0).eval()
    assert net.heads[0].scale.item() == 3.0
    images, patches = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 3, 16, 16)  # 2 x 2 and 1 x 1 maps
    cls, rot, loc = net(images, patches)
    fmap = net.trunk(images)
    torch.testing.assert_close(cls, net.heads[0](fmap.flatten(1)))
    # the rotation head averages its last map over space
    r = net.heads[1].net
    h = F.relu(r[1](r[0](fmap)))
    h = F.relu(r[4](r[3](h)))
    torch.testing.assert_close(rot, r[-1](h.mean(dim=(2, 3))))
    # patch j of image b is the j-th of its grid; its features pair with the centre's (patch 4)
    per_patch = torch.stack([net.trunk(patches[:, j]).flatten(1) for j in range(9)], 1)
    torch.testing.assert_close(loc, net.heads[2](per_patch))
    for k, p in enumerate(M.RelativePatchLocationHead.NEIGHBOURS):
        torch.testing.assert_close(loc[:, k], net.heads[2].pair_logits(per_patch[:, 4], per_patch[:, p]))
    assert M.RelativePatchLocationHead.targets(2).tolist() == [list(range(8))] * 2


def test_resnet18_blocks_and_strides():
    F = nn.functional
    block = M.resnet.BasicBlock(3, 5, stride=2, bn_momentum=0.3).eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics for eval mode
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            assert m.momentum == 0.3
    x = torch.randn(2, 3, 8, 8)
    out = F.relu(block.bn1(F.conv2d(x, block.conv1.weight, stride=2, padding=1)))
    out = block.bn2(F.conv2d(out, block.conv2.weight, padding=1))
    skip = block.shortcut[1](F.conv2d(x, block.shortcut[0].weight, stride=2))
    torch.testing.assert_close(block(x), F.relu(out + skip))
    # total downsampling: 32 with the ImageNet stem (conv /2, pool /2, three stages /2), 8 with the CIFAR one
    for stem, side, final in (("imagenet", 64, 2), ("cifar", 32, 4)):
        net = M.ResNet18(stem=stem).eval()
        with torch.no_grad():
            fmap = net.stages(net.stem(torch.randn(1, 3, side, side)))
            assert fmap.shape == (1, 512, final, final)
            torch.testing.assert_close(net.pool(fmap), fmap.mean(dim=(2, 3)))
    assert all(m.momentum == 0.05 for m in M.ResNet18(bn_momentum=0.05).modules() if isinstance(m, nn.BatchNorm2d))


def test_wide_block_is_pre_activation_with_dropout_between_the_convs():
    F = nn.functional
    block = M.wrn.WideBlock(3, 5, stride=2, dropout=0.5).eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    a = F.relu(block.bn1(x))
    out = F.relu(block.bn2(F.conv2d(a, block.conv1.weight, stride=2, padding=1)))
    expected = F.conv2d(out, block.conv2.weight, padding=1) + F.conv2d(a, block.shortcut.weight, stride=2)
    torch.testing.assert_close(block(x), expected)  # eval: no dropout
    same = M.wrn.WideBlock(5, 5, stride=1).eval()
    y = torch.randn(2, 5, 4, 4)
    a = F.relu(same.bn1(y))
    expected = F.conv2d(F.relu(same.bn2(F.conv2d(a, same.conv1.weight, padding=1))), same.conv2.weight, padding=1)
    torch.testing.assert_close(same(y), expected + y)  # identity shortcut: the raw input
    # training mode: batch statistics, and dropout on conv2's input (the same random mask when reseeded)
    block.train()
    torch.manual_seed(1)
    got = block(x)
    torch.manual_seed(1)
    a = F.relu(F.batch_norm(x, None, None, block.bn1.weight, block.bn1.bias, training=True))
    out = F.relu(F.batch_norm(F.conv2d(a, block.conv1.weight, stride=2, padding=1), None, None, block.bn2.weight,
                              block.bn2.bias, training=True))
    out = F.dropout(out, 0.5, training=True)
    torch.testing.assert_close(got, F.conv2d(out, block.conv2.weight, padding=1) + block.shortcut(a))
    drop = M.WideResNet(depth=10, widen_factor=1, dropout=0.3).train()
    z = torch.randn(2, 3, 8, 8)
    assert not torch.equal(drop(z), drop(z))  # dropout is on in training
    drop.eval()
    assert torch.equal(drop(z), drop(z))


def test_wide_resnet_features_are_pooled_activations():
    net = M.WideResNet(depth=10, widen_factor=1, strides=(2, 2, 2), num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fmap = net.feature_map(x)
        assert fmap.shape == (2, 64, 2, 2) and bool((fmap >= 0).all())  # BN -> ReLU before the pooling
        torch.testing.assert_close(net(x), net.fc(fmap.mean(dim=(2, 3))))
    assert net.conv.padding == (1, 1) and net.conv.stride == (1, 1)
    assert M.wrn28_10(strides=(2, 2, 2)).groups[0][0].conv1.stride == (2, 2)


def test_patch_pair_is_centre_then_neighbour():
    head = M.RelativePatchLocationHead(feature_dim=3, hidden=5).eval()
    c, o = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(head.pair_logits(c, o), head.net(torch.cat([c, o], dim=1)))
