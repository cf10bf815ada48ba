"""Metrics on cases whose values can be worked out on paper."""

import math

import pytest
import torch
from torch import nn

from captum_ltx import GradCAM, RandomMap
from captum_ltx.metrics import (
    adp_pic,
    class_sensitivity,
    curve_auc,
    deletion_insertion,
    gaussian_blur,
    localisation,
    parameter_randomisation,
    perturbation_auc,
    spearman,
)
from conftest import WeightedPixels, tiny_cnn

SIZE = 4  # 16 pixels


class OnePixel(nn.Module):
    """Class 0's logit is 10 x the top-left pixel of channel 0; class 1's is the constant 1."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([10 * v, torch.ones_like(v)], dim=1)


def image():
    x = torch.zeros(1, 3, SIZE, SIZE)
    x[0, 0, 0, 0] = 1.0
    return x


def right_map():
    m = torch.zeros(1, SIZE, SIZE)
    m[0, 0, 0] = 1.0
    m[0, 1:, :] = torch.linspace(0.1, 0.5, 12).view(3, 4)  # distinct lower values elsewhere
    return m


P_CLEAN = 1 / (1 + math.exp(-9))  # softmax([10, 1])[0]
P_GONE = 1 / (1 + math.e)  # softmax([0, 1])[0]


def test_auc_of_known_curves():
    assert curve_auc(torch.ones(10)).item() == pytest.approx(90.0)
    assert curve_auc(torch.tensor([1.0] + [0.0] * 9)).item() == pytest.approx(5.0)
    assert curve_auc(torch.linspace(0, 0.9, 10)).item() == pytest.approx(100 * 0.9**2 / 2)


def test_perturbation_auc_by_hand():
    model, x, m = OnePixel(), image(), right_map()
    # the right map removes the decisive pixel in the first step
    assert perturbation_auc(model, x, m, 0, order="positive").item() == pytest.approx(5.0)
    # the least relevant first: the decisive pixel survives every fraction up to 0.9
    assert perturbation_auc(model, x, m, 0, order="negative").item() == pytest.approx(90.0)
    expected = 100 * 0.1 * (P_CLEAN / 2 + 8.5 * P_GONE)
    assert perturbation_auc(model, x, m, 0, score="probability").item() == pytest.approx(expected, rel=1e-5)
    # the reversed map is the worst case for POS
    assert perturbation_auc(model, x, -m, 0, order="positive").item() == pytest.approx(90.0)


def test_rise_deletion_and_insertion_by_hand():
    model, x, m = OnePixel(), image(), right_map()
    deletion = deletion_insertion(model, x, m, 0, mode="deletion", n_steps=4).item()
    assert deletion == pytest.approx(0.25 * (P_CLEAN / 2 + 3.5 * P_GONE), rel=1e-5)
    blurred = gaussian_blur(x)[0, 0, 0, 0].item()
    start = 1 / (1 + math.exp(1 - 10 * blurred))
    insertion = deletion_insertion(model, x, m, 0, mode="insertion", n_steps=4).item()
    assert insertion == pytest.approx(0.25 * (start / 2 + 3.5 * P_CLEAN), rel=1e-5)


def test_adp_pic_by_hand():
    model, x = OnePixel(), image()
    kept = adp_pic(model, x, right_map(), 0)
    assert kept["adp"].item() == pytest.approx(0.0, abs=1e-4) and kept["pic"].item() == 0.0
    flat = adp_pic(model, x, torch.ones(1, SIZE, SIZE), 0)  # min-max of a flat map is 0: everything removed
    assert flat["adp"].item() == pytest.approx(100 * (P_CLEAN - P_GONE) / P_CLEAN, rel=1e-5)


def test_localisation_by_hand():
    m = torch.zeros(1, SIZE, SIZE)
    m[0, 0, 0] = 1.0
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    mask[0, 0, :2] = True  # object: 2 pixels; the map marks one of them
    scores = localisation(m, mask)
    assert scores["pixel_accuracy"].item() == pytest.approx(15 / 16)
    assert scores["miou"].item() == pytest.approx((1 / 2 + 14 / 15) / 2)
    assert scores["map"].item() == pytest.approx((0.5 * 1 + 0.5 * 2 / 16 + 14 / 15) / 2)
    assert scores["pointing_game"].item() == 1.0
    assert scores["mass_inside"].item() == 1.0
    moved = localisation(m.roll(2, dims=1), mask)
    assert moved["pointing_game"].item() == 0.0 and moved["mass_inside"].item() == 0.0
    with pytest.raises(ValueError, match="empty mask"):
        localisation(m, torch.zeros_like(mask))


def test_batched_equals_one_by_one(images):
    model = tiny_cnn()
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = maps > 0.7
    targets = [0, 1, 2]
    for fn in (
        lambda x, m, t: perturbation_auc(model, x, m, t, batch_size=7),
        lambda x, m, t: perturbation_auc(model, x, m, t, order="negative", score="probability"),
        lambda x, m, t: deletion_insertion(model, x, m, t, mode="insertion", n_steps=8, batch_size=5),
        lambda x, m, t: adp_pic(model, x, m, t)["adp"],
    ):
        batch = fn(images, maps, targets)
        single = torch.cat([fn(images[i : i + 1], maps[i : i + 1], targets[i]) for i in range(3)])
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    single_loc = torch.cat([localisation(maps[i : i + 1], mask[i : i + 1])["map"] for i in range(3)])
    torch.testing.assert_close(localisation(maps, mask)["map"], single_loc)


def test_randomisation_flags_a_map_that_ignores_the_model(images):
    model = tiny_cnn()
    ignores = parameter_randomisation(lambda m: RandomMap(m), model, images, 1)
    assert torch.allclose(ignores, torch.ones(3))
    depends = parameter_randomisation(lambda m: GradCAM(m), model, images, 1)
    assert (depends < 0.9).all(), depends
    torch.testing.assert_close(class_sensitivity(RandomMap(model), images, 0, 1), torch.ones(3))
    assert (class_sensitivity(GradCAM(model), images, 0, 1) < 1).all()


def test_spearman_by_hand():
    a = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert spearman(a, a).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)


def test_mufidelity_on_maps_whose_answer_is_known():
    from captum_ltx.metrics import mufidelity

    g = torch.Generator().manual_seed(0)
    weights = torch.rand(18, 18, generator=g) * 0.02
    model = WeightedPixels(weights).eval()  # small weights: the probability is nearly linear
    x = torch.rand(2, 3, 18, 18, generator=g)
    contribution = weights * x.mean(dim=1)  # what removing each pixel (to 0) takes from the logit
    kwargs = {"baseline": 0.0, "grid_size": 6, "n_samples": 100}
    truthful = mufidelity(model, x, contribution, 0, **kwargs)
    assert (truthful > 0.99).all(), truthful
    assert (mufidelity(model, x, -contribution, 0, **kwargs) < -0.99).all()
    assert torch.equal(mufidelity(model, x, torch.ones(2, 18, 18), 0, **kwargs), torch.zeros(2))  # a flat map
    noise = mufidelity(model, x, torch.rand(2, 18, 18, generator=g), 0, **kwargs)
    assert (noise.abs() < truthful).all() and (noise.abs() < 0.5).all()
    alone = mufidelity(model, x[1:], contribution[1:], 0, **kwargs)
    torch.testing.assert_close(alone, truthful[1:])  # the same subsets whatever the batch
    with pytest.raises(ValueError, match="`subset_fraction` must be in"):
        mufidelity(model, x, contribution, 0, subset_fraction=1.5)


def test_mege_and_reco_on_explanations_whose_stability_is_known():
    from captum_ltx.metrics import mege_reco

    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 8, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    agree = labels.repeat(3, 1)
    # three models that agree on every image and explain it identically: perfectly stable
    same = mege_reco(base.repeat(3, 1, 1, 1), agree, labels)
    assert same["mege"] == pytest.approx(1.0, abs=1e-3) and same["reco"] == 0.0  # float32 ranks; nothing to tell apart
    # model 2 is wrong on images 3-5 and explains them with unrelated maps; the others agree
    maps = base.repeat(3, 1, 1, 1)
    maps[2, 3:] = torch.rand(3, 8, 8, generator=g)
    predictions = agree.clone()
    predictions[2, 3:] = (labels[3:] + 1) % 3
    mixed = mege_reco(maps, predictions, labels)
    assert mixed["mege"] == pytest.approx(1.0, abs=1e-3)  # agreeing pairs still explain alike
    assert mixed["reco"] == pytest.approx(1.0)  # a threshold separates agreeing from disagreeing pairs
    # when agreeing models explain differently, MeGe falls below 1 and ReCo below 1
    noisy = torch.rand(3, 6, 8, 8, generator=g)
    assert mege_reco(noisy, predictions, labels)["mege"] < 0.7
    with pytest.raises(ValueError, match="must agree"):
        mege_reco(maps, predictions, labels[:4])
