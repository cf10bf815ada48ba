"""LTX must find the evidence a model uses: a task whose label lives in one square of the image."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_ltx import LTX, pretrain
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
    random_maps = torch.rand(len(test_x), SIZE, SIZE, generator=g)
    random_share = (random_maps * region).sum((1, 2)) / random_maps.sum((1, 2))
    assert (share > 0.5).all(), share
    assert share.mean() > 0.6
    assert random_share.max() < 0.2
