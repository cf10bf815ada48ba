import math

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import sensitivity_max

from captum_ltx import LTX, Explainer, LTXAttribution
from conftest import IMAGE, assert_unchanged, snapshot, tiny_cnn, tiny_vit

STEPS = 3


def test_alias_and_captum_contract(model):
    ltx = LTX(model)
    assert LTX is LTXAttribution
    assert LTX.get_name() == "LTX"
    assert ltx.has_convergence_delta() is False
    assert ltx.multiplies_by_inputs is False
    assert hasattr(ltx.attribute, "__wrapped__")


def test_shape_range_and_mask_repeated_over_channels(model, images):
    attr = LTX(model, finetune_steps=STEPS).attribute(images, target=1)
    assert attr.shape == images.shape and attr.dtype == images.dtype
    assert attr.min() >= 0 and attr.max() <= 1
    assert torch.equal(attr[:, 0], attr[:, 1]) and torch.equal(attr[:, 0], attr[:, 2])
    assert not attr.requires_grad


@pytest.mark.parametrize(
    "target",
    [2, [0, 3, 4], torch.tensor([0, 3, 4]), torch.tensor(2), torch.tensor([2]), None],
    ids=["int", "list", "tensor1d", "tensor0d", "tensor1", "none"],
)
def test_every_target_form(target, images):
    model = tiny_cnn()
    ltx = LTX(model, finetune_steps=STEPS)
    attr = ltx.attribute(images, target=target)
    if target is None:
        expected = model(images).argmax(dim=1).tolist()
    elif isinstance(target, int) or (isinstance(target, torch.Tensor) and target.numel() == 1):
        expected = [int(target)] * len(images)
    else:
        expected = list(map(int, target))
    reference = torch.cat([ltx.attribute(images[i : i + 1], target=expected[i]) for i in range(len(images))])
    torch.testing.assert_close(attr, reference)


def test_target_changes_the_explanation(images):
    ltx = LTX(tiny_cnn(), finetune_steps=STEPS)
    assert not torch.allclose(ltx.attribute(images, target=0), ltx.attribute(images, target=3))


def test_tuple_inputs_come_back_as_tuple(images):
    ltx = LTX(tiny_vit(), finetune_steps=STEPS)
    out = ltx.attribute((images,), target=1)
    assert isinstance(out, tuple) and len(out) == 1
    torch.testing.assert_close(out[0], ltx.attribute(images, target=1))


def test_batch_equals_one_by_one(model, images):
    ltx = LTX(model, finetune_steps=STEPS)
    batch = ltx.attribute(images, target=[1, 2, 3])
    single = torch.cat([ltx.attribute(images[i : i + 1], target=i + 1) for i in range(3)])
    torch.testing.assert_close(batch, single)
    pltx_batch = ltx.attribute(images, target=1, finetune_steps=0)
    pltx_single = torch.cat([ltx.attribute(images[i : i + 1], target=1, finetune_steps=0) for i in range(3)])
    torch.testing.assert_close(pltx_batch, pltx_single, atol=1e-5, rtol=1e-5)


def test_deterministic_across_instances_and_calls(images):
    first = LTX(tiny_vit(), finetune_steps=STEPS).attribute(images, target=1)
    second = LTX(tiny_vit(), finetune_steps=STEPS).attribute(images, target=1)
    assert torch.equal(first, second)
    ltx = LTX(tiny_vit(), finetune_steps=STEPS)
    assert torch.equal(ltx.attribute(images, target=1), ltx.attribute(images, target=1))


def test_model_and_explainer_unchanged(model, images):
    model.train()  # a caller's mode must come back as it was
    for p in list(model.parameters())[:2]:
        p.requires_grad_(False)
    first = next(p for p in model.parameters() if p.requires_grad)
    first.grad = torch.ones_like(first)
    handle = model.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    ltx = LTX(model, finetune_steps=STEPS)
    ltx.attribute(images, target=2)
    explainer_before = {k: v.clone() for k, v in ltx.explainer.state_dict().items()}
    ltx.attribute(images, target=[0, 1, 2])
    assert_unchanged(before, model)
    for k, v in ltx.explainer.state_dict().items():
        assert torch.equal(v, explainer_before[k]), k
    handle.remove()


def test_caller_under_no_grad(images):
    ltx = LTX(tiny_cnn(), finetune_steps=STEPS)
    expected = ltx.attribute(images, target=1)
    with torch.no_grad():
        torch.testing.assert_close(ltx.attribute(images, target=1), expected)


def test_noise_tunnel_and_sensitivity_max(images):
    ltx = LTX(tiny_cnn(), finetune_steps=2)
    nt = NoiseTunnel(ltx).attribute(images[:2], nt_samples=2, stdevs=0.1, target=[1, 2])
    assert nt.shape == images[:2].shape and torch.isfinite(nt).all()
    sens = sensitivity_max(ltx.attribute, images[:2], target=[1, 2], n_perturb_samples=2)
    assert sens.shape == (2,) and torch.isfinite(sens).all() and (sens >= 0).all()


def test_finetuning_lowers_the_objective(images):
    model = tiny_cnn()
    x = images[:1]
    ltx = LTX(model, finetune_steps=20, selection="last", lr=1e-2)
    losses = []
    for steps in (0, 20):
        mask = ltx.attribute(x, target=1, finetune_steps=steps)[:, :1]
        low_res = torch.nn.functional.adaptive_avg_pool2d(mask, ltx.explainer.config["mask_size"])
        losses.append(ltx.objective(model, x, mask, low_res, torch.tensor([1]), torch.tensor(-1.0)).item())
    assert losses[1] < losses[0]


def test_mean_selection_averages_the_finetuning_path(images):
    last = LTX(tiny_cnn(), finetune_steps=3, selection="last", lr=1e-2)
    path = [last.attribute(images[:1], target=1, finetune_steps=k) for k in range(4)]
    mean = LTX(last.forward_func, last.explainer, finetune_steps=3, selection="mean", lr=1e-2)
    torch.testing.assert_close(mean.attribute(images[:1], target=1), torch.stack(path).mean(dim=0))
    assert not torch.allclose(path[0], path[-1])


@pytest.mark.parametrize("selection", ["loss", "last", "mean", "pos_auc"])
def test_every_selection_mode_with_the_counterfactual_objective_leaves_the_model_unchanged(selection, images):
    model = tiny_cnn()
    before = snapshot(model)
    ltx = LTX(model, finetune_steps=STEPS, selection=selection, counterfactual=True)
    attr = ltx.attribute(images[:2], target=1)
    assert_unchanged(before, model)
    assert attr.shape == images[:2].shape and 0 <= attr.min() <= attr.max() <= 1


def _walk(selection, losses, scores=None, patience=None, early_stop=6.0):
    """The mask FinetuningPath picks for one image shown masks 0, 1, 2, ... (mask k is filled with k)."""
    from captum_ltx._finetuning import FinetuningPath

    path = FinetuningPath(selection, 1, patience, early_stop)
    for k, loss in enumerate(losses):
        score = loss if scores is None else scores[k]
        path.see(torch.full((1, 1, 2, 2), float(k)), torch.tensor([loss]), torch.tensor([score]))
        if path.finished:
            break
    return float(path.result()[0, 0, 0, 0])


def test_each_selection_mode_picks_its_mask_along_the_path():
    losses = [3.0, 1.0, 2.0, 1.5]
    assert _walk("loss", losses) == 1  # the lowest objective
    assert _walk("last", losses) == 3
    assert _walk("mean", losses) == (0 + 1 + 2 + 3) / 4
    # pos_auc: the lowest score seen, stopping at the first below the threshold
    assert _walk("pos_auc", losses, scores=[9.0, 6.5, 8.0, 7.0]) == 1
    assert _walk("pos_auc", losses, scores=[9.0, 5.0, 1.0, 0.5]) == 1  # stopped at step 1: later masks unseen


def test_patience_stops_once_the_objective_has_not_improved():
    losses = [3.0, 1.0, 2.0, 1.5, 0.1]  # no improvement at steps 2 and 3
    assert _walk("last", losses, patience=2) == 3  # stopped after step 3, never sees step 4's better mask
    assert _walk("last", losses, patience=3) == 4
    assert _walk("mean", losses, patience=2) == (0 + 1 + 2 + 3) / 4
    assert _walk("loss", losses, patience=2) == 1


def test_finetune_head_only_keeps_backbone(images):
    head_only = LTX(tiny_cnn(), finetune_steps=STEPS, finetune="head", lr=1e-2).attribute(images[:1], target=1)
    # the whole explainer with a backbone that never moves (lr 0: no step, no weight decay) gives the same maps
    frozen = LTX(tiny_cnn(), finetune_steps=STEPS, finetune="all", lr=1e-2, backbone_lr=0.0).attribute(images[:1], target=1)
    torch.testing.assert_close(head_only, frozen, atol=1e-5, rtol=1e-4)
    full = LTX(tiny_cnn(), finetune_steps=STEPS, finetune="all", lr=1e-2, backbone_lr=1e-2).attribute(images[:1], target=1)
    assert not torch.allclose(head_only, full, atol=1e-4)


def test_baselines_and_additional_forward_args(images):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x, scale):
            return self.net(x) * scale.view(-1, 1)

    model = Scaled().eval()
    ltx = LTX(model, finetune_steps=STEPS, explainer_options={"input_size": (3, IMAGE, IMAGE), "feature_layer": "net.layer4"})
    scale = torch.tensor([1.0, 2.0, 0.5])
    batch = ltx.attribute(images, target=1, baselines=0.5, additional_forward_args=(scale,))
    single = torch.cat([
        ltx.attribute(images[i : i + 1], target=1, baselines=0.5, additional_forward_args=(scale[i : i + 1],)) for i in range(3)
    ])
    torch.testing.assert_close(batch, single)
    assert not torch.allclose(batch, ltx.attribute(images, target=1, baselines=torch.zeros(3), additional_forward_args=(scale,)))


def test_plain_function_needs_an_explainer(images):
    model = tiny_cnn()
    with pytest.raises(TypeError, match="explainer"):
        LTX(lambda x: model(x))
    ltx = LTX(model)
    ltx.attribute(images[:1], target=0, finetune_steps=0)
    attr = LTX(lambda x: model(x), ltx.explainer, finetune_steps=1).attribute(images[:1], target=0)
    # a plain function explained with the module's explainer gives the module's map
    torch.testing.assert_close(attr, LTX(model, ltx.explainer, finetune_steps=1).attribute(images[:1], target=0))


def test_every_objective_setting_and_the_multi_stride_head_leave_the_model_unchanged(images):
    model = tiny_cnn()
    before = snapshot(model)
    objective = {"complement_weight": 1.0, "area": [0.1, 0.4], "tv_weight": 0.5, "baseline": "mix"}
    ltx = LTX(model, finetune_steps=STEPS, objective=objective, explainer_options={"multi_stride": True})
    attr = ltx.attribute(images[:2], target=1)
    assert_unchanged(before, model)
    assert attr.shape == images[:2].shape and 0 <= attr.min() <= attr.max() <= 1


def _spread_explainer(make, dtype):
    """A model and an explainer whose finetuned masks differ from image to image."""
    model = make()
    explainer = Explainer.from_model(model, input_size=(3, IMAGE, IMAGE)).to(dtype)
    return model.to(dtype), explainer


@pytest.mark.parametrize("finetune", ["all", "head"])
@pytest.mark.parametrize("selection", ["loss", "mean", "pos_auc"])
def test_batched_finetuning_equals_one_by_one_in_float64(finetune, selection):
    model, explainer = _spread_explainer(tiny_vit, torch.float64)
    x = torch.randn(4, 3, IMAGE, IMAGE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    options = dict(finetune_steps=6, finetune=finetune, selection=selection, lr=1e-2, patience=2, pos_auc_early_stop=60.0)
    one = LTX(model, explainer, batch_size=1, **options).attribute(x, target=[0, 1, 2, 3])
    together = LTX(model, explainer, batch_size=3, **options).attribute(x, target=[0, 1, 2, 3])
    assert one.std() > 1e-3  # masks that finetuning moved, not one constant
    assert (together - one).abs().max() <= 1e-10


def test_batched_finetuning_in_float32_within_the_one_by_one_spread():
    model, explainer = _spread_explainer(tiny_vit, torch.float32)
    x = torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    nudged = torch.nextafter(x, torch.full_like(x, math.inf))  # every input one ulp up
    options = dict(finetune_steps=25, lr=1e-2)
    one = LTX(model, explainer, batch_size=1, **options)
    spread = (one.attribute(x, target=1) - one.attribute(nudged, target=1)).abs().max()
    together = LTX(model, explainer, batch_size=4, **options).attribute(x, target=1)
    assert (together - one.attribute(x, target=1)).abs().max() <= max(2 * spread.item(), 1e-6)


def test_patience_stops_an_image_whose_objective_stalls(images):
    model = tiny_cnn()
    ltx = LTX(model, finetune_steps=0)
    pltx = ltx.attribute(images[:2], target=1)
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return model(x)

    # lr 0: the objective never improves after step 0, so each image stops after `patience` more steps
    stalled = LTX(counted, ltx.explainer, finetune_steps=20, lr=0.0, weight_decay=0.0, patience=3, batch_size=1)
    calls.clear()
    torch.testing.assert_close(stalled.attribute(images[:2], target=1), pltx)
    # one forward for the class count, then per image 1 + 3 objectives (black and blur in one forward)
    assert len(calls) == 1 + 2 * (1 + 3)


def test_finetuning_settings_recorded_in_the_checkpoint_are_used(tmp_path, images):
    ltx = LTX(tiny_cnn(), finetune_steps=0)
    ltx.attribute(images[:1], target=1)
    ltx.explainer.record_finetuning(finetune="head", patience=2, finetune_steps=4, lr=1e-3)
    ltx.explainer.save(tmp_path / "ckpt")
    loaded = LTX(ltx.forward_func, str(tmp_path / "ckpt"))
    assert (loaded.finetune, loaded.patience, loaded.finetune_steps, loaded.lr) == ("head", 2, 4, 1e-3)
    assert LTX(ltx.forward_func, str(tmp_path / "ckpt"), finetune="all", patience=None).finetune == "all"


def test_bfloat16_autocast_gives_maps_near_float32(images):
    model = tiny_cnn()
    before = snapshot(model)
    exact = LTX(model, finetune_steps=STEPS).attribute(images, target=1)
    ltx = LTX(model, finetune_steps=STEPS, autocast=True)
    fast = ltx.attribute(images, target=1)
    assert_unchanged(before, model)
    assert fast.dtype == images.dtype and torch.isfinite(fast).all()
    assert (fast - exact).abs().max() < 0.05


@pytest.mark.parametrize("name, value", [("batch_size", 0), ("patience", 0), ("patience", 1.5), ("autocast", "yes")])
def test_finetuning_options_are_checked(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        LTX(tiny_cnn(), **{name: value})
