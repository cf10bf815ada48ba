"""The objective's terms on hand-computed tensors, and what each mask selection promises."""

import math

import pytest
import torch
from torch import nn

from captum_ltx import LTX, LTXObjective
from captum_ltx.metrics import perturbation_auc
from captum_ltx.objective import blurred as blur_of

# a 2 x 2 single-channel image and a mask over it
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
MASK = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]]])
TARGET = torch.tensor([0])


def two_logits(z):
    """Logits (sum of the pixels, 0): p_0 = sigmoid(sum)."""
    return torch.stack([z.flatten(1).sum(dim=1), torch.zeros(z.shape[0])], dim=1)


def ce_of_class_0(total):
    return math.log(1 + math.exp(-total))  # -log sigmoid(total)


def test_prediction_and_mask_terms():
    kept = (1 * 0.9 + 2 * 0.2 + 3 * 0.6 + 4 * 0.1)  # black (0) fills the rest
    objective = LTXObjective(mask_weight=2.0)
    value = objective(two_logits, X, MASK, MASK, TARGET, torch.zeros(()))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(ce_of_class_0(kept) + 2.0 * (0.9 + 0.2 + 0.6 + 0.1) / 4, rel=1e-6)


def test_complement_term_is_minus_log_of_the_other_classes():
    complement_sum = 1 * 0.1 + 2 * 0.8 + 3 * 0.4 + 4 * 0.9
    p0 = 1 / (1 + math.exp(-complement_sum))
    without = LTXObjective(mask_weight=0.0)(two_logits, X, MASK, MASK, TARGET, torch.zeros(()))
    value = LTXObjective(mask_weight=0.0, complement_weight=0.5)(two_logits, X, MASK, MASK, TARGET, torch.zeros(()))
    assert (value - without).item() == pytest.approx(-0.5 * math.log(1 - p0), rel=1e-5)


def test_area_band_and_total_variation():
    # sorted mask 0.9, 0.6, 0.2, 0.1; band (0.25, 0.5): the top quarter should be 1, the bottom half 0
    area = LTXObjective(mask_weight=0.0, area=(0.25, 0.5), area_weight=3.0)
    base = LTXObjective(mask_weight=0.0)
    extra = area(two_logits, X, MASK, MASK, TARGET, torch.zeros(())) - base(two_logits, X, MASK, MASK, TARGET, torch.zeros(()))
    assert extra.item() == pytest.approx(3.0 * ((1 - 0.9) ** 2 + 0.2**2 + 0.1**2) / 4, rel=1e-5)
    # one number is the band (a, a): extremal perturbations' constraint
    assert LTXObjective(area=0.5).area == (0.5, 0.5)
    tv = LTXObjective(mask_weight=0.0, tv_weight=2.0)
    extra = tv(two_logits, X, MASK, MASK, TARGET, torch.zeros(())) - base(two_logits, X, MASK, MASK, TARGET, torch.zeros(()))
    # rows: |0.6 - 0.9|, |0.1 - 0.2| -> mean 0.2; columns: |0.2 - 0.9|, |0.1 - 0.6| -> mean 0.6
    assert extra.item() == pytest.approx(2.0 * (0.2 + 0.6), rel=1e-5)


def test_blur_and_mixed_baselines():
    flat = torch.full((1, 1, 8, 8), 2.0)
    mask = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # a flat image blurs to itself: removing pixels changes nothing, unlike a black fill
    blur = LTXObjective(mask_weight=0.0, baseline="blur")(two_logits, flat, mask, mask, TARGET, torch.zeros(()))
    assert blur.item() == pytest.approx(ce_of_class_0(2.0 * 64), abs=1e-6)
    # finetuning (no generator): the mean of the black and the blur objectives
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    black = LTXObjective(mask_weight=1.0)(two_logits, x, mask, mask, TARGET, torch.zeros(()))
    blurred = LTXObjective(mask_weight=1.0, baseline="blur")(two_logits, x, mask, mask, TARGET, torch.zeros(()))
    mix = LTXObjective(mask_weight=1.0, baseline="mix")(two_logits, x, mask, mask, TARGET, torch.zeros(()))
    assert mix.item() == pytest.approx(((black + blurred) / 2).item(), rel=1e-6)
    # pretraining (a generator): each image takes one of the two
    batch = x.repeat(16, 1, 1, 1)
    drawn = LTXObjective(mask_weight=1.0, baseline="mix")(
        two_logits, batch, mask.expand_as(batch), mask.expand_as(batch), TARGET.repeat(16), torch.zeros(()),
        generator=torch.Generator().manual_seed(0),
    )
    assert {round(v, 5) for v in drawn.tolist()} == {round(black.item(), 5), round(blurred.item(), 5)}
    # a blurred image handed in is the one used (finetuning blurs once per image, not per step)
    given = LTXObjective(mask_weight=1.0, baseline="blur")(
        two_logits, x, mask, mask, TARGET, torch.zeros(()), blurred_input=blur_of(x)
    )
    assert given.item() == pytest.approx(blurred.item(), rel=1e-6)
    other = LTXObjective(mask_weight=1.0, baseline="blur")(
        two_logits, x, mask, mask, TARGET, torch.zeros(()), blurred_input=torch.zeros_like(x)
    )
    assert other.item() == pytest.approx(black.item(), rel=1e-6)


@pytest.mark.parametrize(
    "settings, argument",
    [({"mask_weight": -1}, "mask_weight"), ({"tv_weight": float("nan")}, "tv_weight"), ({"baseline": "grey"}, "baseline"),
     ({"area": (0.5, 0.2)}, "area"), ({"area": "half"}, "area")],
)
def test_bad_settings_name_the_argument(settings, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        LTXObjective(**settings)


def test_settings_round_trip_through_a_config():
    objective = LTXObjective(mask_weight=0.0, complement_weight=1.0, area=(0.1, 0.3), tv_weight=0.2, baseline="mix")
    assert LTXObjective.from_config(objective.to_config()) == objective
    with pytest.raises(ValueError, match="unknown objective settings"):
        LTXObjective.from_config({"complement": 1.0})


# -- selection: which of the masks seen during finetuning comes back ----------------------------------

SIZE = 12


def full_resolution_cnn():
    """A CNN that never downsamples, so the explainer's low-resolution mask is the mask itself."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def finetuning_path(model, image, steps, **options):
    """The masks finetuning sees: the one before each step's update, and the final one."""
    last = LTX(model, finetune_steps=steps, selection="last", explainer_options={"input_size": (3, SIZE, SIZE)}, **options)
    return [last.attribute(image, target=1, finetune_steps=k)[:, :1] for k in range(steps + 1)], last.explainer


@pytest.fixture
def image():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_loss_selection_returns_the_lowest_objective_mask(image):
    model = full_resolution_cnn()
    # a large lr makes the objective jump about, so the lowest one is not the last
    path, explainer = finetuning_path(model, image, 8, lr=0.3)
    objective = LTXObjective()
    values = [objective(model, image, m, m, torch.tensor([1]), torch.zeros(())).item() for m in path]
    best = min(range(len(values)), key=values.__getitem__)
    assert best != len(path) - 1, values
    chosen = LTX(model, explainer, finetune_steps=8, lr=0.3, selection="loss").attribute(image, target=1)[:, :1]
    torch.testing.assert_close(chosen, path[best])


def test_pos_auc_selection_and_its_early_stop(image):
    model = full_resolution_cnn()
    path, explainer = finetuning_path(model, image, 6, lr=0.3)
    aucs = [perturbation_auc(model, image, m.expand_as(image), torch.tensor([1])).item() for m in path]
    options = dict(finetune_steps=6, lr=0.3, selection="pos_auc")
    # without an early stop: the first of the lowest AUCs (strict <, as the reference)
    chosen = LTX(model, explainer, pos_auc_early_stop=-1.0, **options).attribute(image, target=1)[:, :1]
    torch.testing.assert_close(chosen, path[aucs.index(min(aucs))])
    # a threshold above every AUC stops at once: the pretrained (pLTX) mask
    first = LTX(model, explainer, pos_auc_early_stop=max(aucs) + 1, **options).attribute(image, target=1)[:, :1]
    torch.testing.assert_close(first, path[0])
