"""Issue 25: defaults and inputs that used to give silently wrong results now warn or fail clearly."""

import warnings

import pytest
import torch
import torchvision

from captum_ltx import LTX, Explainer, GradCAM
from captum_ltx._captum import Saliency
from conftest import IMAGE, tiny_cnn


def images(n=2, size=IMAGE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def messages(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", [lambda m: LTX(m, finetune_steps=1), GradCAM], ids=["ltx", "gradcam"])
def test_an_input_dtype_other_than_the_models_names_both_and_the_fix(method, dtype):
    expected = rf"`inputs` are {dtype} but the model's weights are torch.float32: pass `inputs.to\(torch.float32\)`"
    with pytest.raises(TypeError, match=expected):
        method(tiny_cnn()).attribute(images().to(dtype), target=1)


def blind_cnn():
    """A classifier whose logits do not depend on the image: every gradient is zero."""
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.zero_()
    return model


@pytest.mark.parametrize("method, name", [(GradCAM, "GradCAM"), (Saliency, "Saliency")])
def test_a_flat_map_warns_and_an_informative_one_does_not(method, name):
    said = messages(lambda: method(blind_cnn()).attribute(images(), target=1))
    assert [m for m in said if m.startswith(f"{name}: the map of input(s) [0, 1] is flat")], said
    assert not [m for m in messages(lambda: Saliency(tiny_cnn()).attribute(images(), target=1)) if "flat" in m]


def test_ltx_with_a_fresh_head_on_unnormalised_features_warns_of_its_empty_mask():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()  # the case: a mask near 0 everywhere
    said = messages(lambda: LTX(model, finetune_steps=2).attribute(images(1, 64), target=3))
    assert [m for m in said if "LTX: the mask of input(s) [0] is" in m and "fresh head" in m and "pretrain an explainer" in m], said


def test_a_saturated_ltx_mask_warns():
    ltx = LTX(tiny_cnn(), finetune_steps=1)
    said = messages(lambda: ltx._warn_if_uninformative(torch.linspace(0.96, 0.99, 64).view(1, 1, 8, 8)))
    assert said == ["LTX: the mask of input(s) [0] is saturated (above 0.95 everywhere); raise mask_weight"]


def test_an_input_much_smaller_than_the_explainers_warns():
    model = tiny_cnn()
    explainer = Explainer.from_model(model, input_size=(3, IMAGE, IMAGE))
    ltx = LTX(model, explainer, finetune_steps=0)
    small = f"LTX: inputs of {IMAGE // 2}x{IMAGE // 2} pixels are much smaller than the {IMAGE}x{IMAGE}"
    assert [m for m in messages(lambda: ltx.attribute(images(1, IMAGE // 2), target=1)) if m.startswith(small)]
    assert not [m for m in messages(lambda: ltx.attribute(images(1, IMAGE), target=1)) if "smaller" in m]


def test_pos_auc_selection_that_stops_before_finetuning_says_it_returns_pltx():
    model = tiny_cnn()
    ltx = LTX(model, Explainer.from_model(model, input_size=(3, IMAGE, IMAGE)), selection="pos_auc",
              pos_auc_early_stop=100.0, finetune_steps=3)  # POS-AUC is at most 90: every image stops at once
    x = images()
    said = messages(lambda: ltx.attribute(x, target=1))
    assert ("LTX: 2 of 2 image(s) got the explainer's mask before any finetuning (pLTX): with selection='pos_auc', "
            "2 scored below pos_auc_early_stop=100.0 at once, which stops finetuning") in said, said
    torch.testing.assert_close(ltx.attribute(x, target=1), ltx.attribute(x, target=1, finetune_steps=0))
