"""LTX must find the evidence a model uses: a task whose label lives in one square of the image."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_ltx import LTX, methods, pretrain
from conftest import PlainCNN

SIZE = 32
SQUARE = (slice(2, 14), slice(2, 14))  # 144 of 1024 pixels: 14% of the image
COLOURS = torch.tensor([[1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5], [1.5, 1.5, 0], [0, 0, 0]])  # class 4: no colour


def scenes(n, generator):
    """Noise images; the class is the colour added to the top-left square (class 4: none)."""
    x = torch.randn(n, 3, SIZE, SIZE, generator=generator) * 0.5
    y = torch.randint(0, len(COLOURS), (n,), generator=generator)
    x[:, :, SQUARE[0], SQUARE[1]] += COLOURS[y].view(n, 3, 1, 1)
    return x, y


def test_ltx_puts_its_mask_on_the_evidence():
    g = torch.Generator().manual_seed(0)
    x, y = scenes(512, g)
    torch.manual_seed(0)
    model = PlainCNN()
    model.fc = nn.Linear(16, len(COLOURS))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        i = torch.randint(0, len(x), (64,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        optimizer.step()
    model.eval()
    test_x, test_y = scenes(40, g)
    keep = test_y < 4  # coloured classes: removing the square must change the prediction
    test_x, test_y = test_x[keep][:8], test_y[keep][:8]
    assert (model(test_x).argmax(1) == test_y).float().mean() >= 0.9

    explainer = pretrain(
        model, TensorDataset(x[:384], y[:384]), val_data=TensorDataset(x[384:], y[384:]),
        epochs=8, batch_size=32, lr=5e-3, mask_weight=2.0, target="predicted", progress=False,
    )
    maps = LTX(model, explainer, finetune_steps=30, mask_weight=10.0, lr=5e-3).attribute(test_x, target=test_y)[:, 0]
    region = torch.zeros(SIZE, SIZE)
    region[SQUARE] = 1
    share = (maps * region).sum((1, 2)) / maps.sum((1, 2))
    # a map blind to the evidence puts 14% of its mass on the square (its share of the pixels)
    assert (share > 0.5).all(), share
    assert share.mean() > 0.6


# -- evidence that moves: a bright patch at a random place decides the class ------------------------

PATCH = 8
PATCH_COLOURS = torch.tensor([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.15, 0.15, 1.0]])  # class 3: no patch


def patch_scenes(n, generator, patched_only=False):
    """Dim noise in [0, 0.35] (inputs in [0, 1], no normalisation) with an 8 x 8 patch of the class's
    colour at a random place; returns images, classes and the patch's region."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=generator) * 0.35
    y = torch.randint(0, len(PATCH_COLOURS) + (0 if patched_only else 1), (n,), generator=generator)
    corners = torch.randint(0, SIZE - PATCH + 1, (n, 2), generator=generator)
    region = torch.zeros(n, SIZE, SIZE)
    for i, (r, c) in enumerate(corners.tolist()):
        if y[i] < len(PATCH_COLOURS):
            x[i, :, r : r + PATCH, c : c + PATCH] = PATCH_COLOURS[y[i]].view(3, 1, 1)
            region[i, r : r + PATCH, c : c + PATCH] = 1
    return x, y, region


@pytest.fixture(scope="module")
def patch_task():
    """The plain nn.Sequential of a new user: raw ReLU features (values far from unit scale), no
    downsampling, max-pooled; trained until the patch decides its answer."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, len(PATCH_COLOURS) + 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        x, y, _ = patch_scenes(64, g)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    x, y, region = patch_scenes(12, torch.Generator().manual_seed(1), patched_only=True)
    with torch.no_grad():
        assert (net(x).argmax(1) == y).all()
        # without its patch every image is read as the patch-less class: the patch is the evidence
        assert (net(x * (1 - region[:, None])).argmax(1) == len(PATCH_COLOURS)).all()
    return net, x, y, region


def share_on(maps, region):
    return (maps * region).sum((1, 2)) / maps.sum((1, 2))


def test_fresh_head_ltx_finds_moving_evidence_with_default_settings(patch_task):
    net, x, y, region = patch_task
    maps = LTX(net).attribute(x, target=y)[:, 0]
    share = share_on(maps, region)
    # a map spread evenly would put 64 / 1024 = 6% of its mass on the patch
    assert (share > 0.5).all(), share
    assert share.mean() > 0.8, share


def test_gradcam_finds_moving_evidence_without_a_downsampling_stage(patch_task):
    net, x, y, region = patch_task
    share = share_on(methods.create("gradcam", net).attribute(x, target=y)[:, 0], region)
    assert (share > 0.5).all(), share
    assert share.mean() > 0.7, share
