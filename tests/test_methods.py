import pytest
import timm
import torch
import torch.nn.functional as F
from captum.attr import NoiseTunnel

from captum_ltx import DIX, IIA, AttentionRollout, GradCAM, methods, to_map
from captum_ltx._vit import output_row_map, rollout
from conftest import IMAGE, NUM_CLASSES, WeightedPixels, assert_unchanged, plain_cnn, snapshot, tiny_cnn, tiny_vit

FAST = {"ltx": {"finetune_steps": 2}, "ltx_pos_auc": {"finetune_steps": 2}, "ig": {"n_steps": 8}, "iia": {"n_steps": 3}, "iia3": {"n_steps": 2}, "dix": {"n_steps": 3}, "sobol": {"grid_size": 4, "n_designs": 8}}
FAMILIES = {"vit": tiny_vit, "cnn": tiny_cnn}


def cases():
    for family, make in FAMILIES.items():
        for name in methods.available(family):
            yield pytest.param(make, name, id=f"{family}-{name}")


def call(method, x, target, name):
    return method.attribute(x, target=target)


@pytest.mark.parametrize("make, name", list(cases()))
def test_every_method_shape_batching_determinism_and_model_unchanged(make, name, images):
    model = make()
    model.train()
    first = next(model.parameters())
    first.grad = torch.full_like(first, 0.5)
    before = snapshot(model)
    method = methods.create(name, model, **FAST.get(name, {}))
    batch = call(method, images, [1, 2, 3], name)
    assert batch.shape == images.shape and torch.isfinite(batch).all()
    single = torch.cat([call(method, images[i : i + 1], i + 1, name) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(call(method, images, [1, 2, 3], name), batch)  # deterministic
    with torch.no_grad():
        torch.testing.assert_close(call(method, images, [1, 2, 3], name), batch, atol=1e-5, rtol=1e-5)
    assert to_map(batch).shape == (3, *images.shape[-2:])
    assert_unchanged(before, model)


@pytest.mark.parametrize("target", [2, [0, 3, 4], torch.tensor([0, 3, 4]), torch.tensor(2), None], ids=["int", "list", "tensor", "0d", "none"])
@pytest.mark.parametrize("cls", [GradCAM, IIA, DIX])
def test_target_forms(cls, target, images):
    model = tiny_cnn()
    method = cls(model) if cls is GradCAM else cls(model, n_steps=2)
    out = method.attribute(images, target=target)
    expected = model(images).argmax(1) if target is None else torch.as_tensor(target).expand(3)
    torch.testing.assert_close(out, method.attribute(images, target=expected))


def test_registry_refuses_what_it_cannot_do():
    cnn = tiny_cnn()
    for name in ("rollout", "gae"):
        with pytest.raises(ValueError, match=f"method '{name}' supports vit models; this model is a cnn"):
            methods.create(name, cnn)
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        methods.create("lime", cnn)
    with pytest.raises(ValueError, match="Rollout supports vit"):
        AttentionRollout(cnn)
    expected = {"ltx", "pltx", "ig", "gradcam", "iia", "dix", "rollout", "gae", "saliency", "input_x_gradient", "occlusion", "random"}
    assert expected <= set(methods.available())
    assert {"rollout", "gae"}.isdisjoint(methods.available("cnn"))


OTHER_TIMM = {
    "vit-registers": lambda: timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, reg_tokens=4,
        no_embed_class=True,
    ),
    "deit-distilled": lambda: timm.create_model(
        "deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    ),
    "convnext": lambda: timm.create_model("test_convnext", num_classes=5),
    "efficientnet": lambda: timm.create_model("test_efficientnet", num_classes=5),
}


@pytest.mark.parametrize("kind", sorted(OTHER_TIMM))
def test_other_timm_families(kind):
    torch.manual_seed(0)
    model = OTHER_TIMM[kind]().eval()
    x = torch.randn(2, 3, 32 if "vit" in kind or "deit" in kind else 64, 32 if "vit" in kind or "deit" in kind else 64)
    family = "vit" if kind in ("vit-registers", "deit-distilled") else "cnn"
    assert methods.model_family(model) == family
    for name in ("gradcam", "iia", "dix") + (("rollout", "gae") if family == "vit" else ()):
        method = methods.create(name, model, **FAST.get(name, {}))
        out = method.attribute(x, target=[1, 2])
        assert out.shape == x.shape and torch.isfinite(out).all(), name
        assert (out.flatten(1).std(dim=1) > 0).all(), name  # min-max scaling hides nothing: no image got a flat map
        if name != "rollout":  # rollout explains no class
            assert not torch.allclose(out, method.attribute(x, target=[2, 1])), name


def test_registry_options():
    model = tiny_cnn()
    assert methods.create("ig", model, n_steps=7).attribute_defaults["n_steps"] == 7
    with pytest.raises(ValueError, match="`finetune_steps`"):
        methods.create("pltx", model, finetune_steps=3)


def test_plain_module_cnn_is_supported(images):
    model = plain_cnn()
    for name in ("gradcam", "iia", "dix"):
        method = methods.create(name, model, **FAST.get(name, {}))
        out = method.attribute(images, target=1)
        assert out.shape == images.shape and (out.flatten(1).std(dim=1) > 0).all(), name
        assert not torch.allclose(out, method.attribute(images, target=3)), name


def test_gradcam_on_a_vit_is_not_all_zero(images):
    model = tiny_vit()
    attr = GradCAM(model, normalize=False).attribute(images, target=1)
    assert attr.abs().sum() > 0
    assert all(getattr(b.attn, "fused_attn", True) for b in model.blocks)


def test_vit_gradcam_reads_the_token_grid_without_touching_the_model(images):
    model = tiny_vit()
    modules, before = dict(model.named_modules()), snapshot(model)
    default = GradCAM(model).attribute(images, target=1)
    assert_unchanged(before, model)
    assert all(model.get_submodule(name) is module for name, module in modules.items())  # nothing swapped in
    by_module = GradCAM(model, layer=model.blocks[0].norm1).attribute(images, target=1)
    torch.testing.assert_close(by_module, GradCAM(model, layer="blocks.0.norm1").attribute(images, target=1))
    assert not torch.allclose(by_module, default)  # a layer given as a module is the one read


def test_iia2_equals_its_formula_on_a_tiny_cnn(images):
    """Released IIA2: sum_c sum_k dy/du_k * ReLU(u_k) at the last stage, u_k at x_k = (k/n) x."""
    model, n, target = tiny_cnn(), 4, 3
    x = images[:1]
    total = 0
    for k in range(n + 1):
        captured = []
        handle = model.layer4.register_forward_hook(lambda m, i, out: captured.append(out))
        logits = model(k / n * x)
        handle.remove()
        grad = torch.autograd.grad(logits[0, target], captured[0])[0]
        total = total + (grad * captured[0].clamp_min(0)).sum(dim=1, keepdim=True)
    expected = F.interpolate(total, size=x.shape[-2:], mode="bicubic", align_corners=False)
    attr = IIA(model, n_steps=n, normalize=False).attribute(x, target=target)
    torch.testing.assert_close(attr[:, :1], expected.detach(), atol=1e-5, rtol=1e-4)


def test_iia_finds_layers_from_the_model():
    model = tiny_cnn()
    iia = IIA(model)
    assert iia.layers.cnn(torch.zeros(1, 3, 32, 32), ()) == ("layer3", "layer4")
    assert IIA(tiny_vit()).layers.vit() == (0, 1)
    with pytest.raises(ValueError, match="`layers`"):
        IIA(model, layers=("layer3", "nonexistent"))
    with pytest.raises(ValueError, match="`variant`"):
        IIA(model, variant=4)


def test_rollout_of_identity_and_uniform_attention_is_uniform(images):
    n = 17
    identity = [torch.eye(n).expand(2, n, n) for _ in range(3)]
    row = output_row_map(rollout(identity), tiny_vit(), (32, 32))
    assert torch.equal(row, torch.zeros_like(row))
    model = tiny_vit()
    with torch.no_grad():
        for block in model.blocks:  # q = k = 0: every attention row is uniform
            block.attn.qkv.weight[: 2 * model.embed_dim].zero_()
            block.attn.qkv.bias[: 2 * model.embed_dim].zero_()
    attr = AttentionRollout(model, normalize=False).attribute(images)
    torch.testing.assert_close(attr, torch.full_like(attr, attr[0, 0, 0, 0].item()))


def test_attention_maps_read_the_patch_tokens_an_avg_pooled_vit_classifies(images):
    def vit(pooling):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 num_classes=10, global_pool=pooling, fc_norm=False).eval()

    model = vit("avg")
    joint = torch.rand(2, 17, 17)
    torch.testing.assert_close(output_row_map(joint, model, (32, 32)).flatten(1), joint[:, 1:, 1:].mean(dim=1))
    torch.testing.assert_close(output_row_map(joint, tiny_vit(), (32, 32)).flatten(1), joint[:, 0, 1:])
    model.pool_include_prefix = True  # timm then averages the class token with the patch tokens
    torch.testing.assert_close(output_row_map(joint, model, (32, 32)).flatten(1), joint[:, :, 1:].mean(dim=1))
    model.pool_include_prefix = False
    # rollout's map of a pooled ViT is no longer the class token's row, which its classifier never reads
    pooled = AttentionRollout(model, normalize=False).attribute(images[:1])
    model.global_pool = "token"
    token = AttentionRollout(model, normalize=False).attribute(images[:1])
    assert not torch.allclose(pooled, token)
    for name in ("gae", "iia", "dix"):
        assert torch.isfinite(methods.create(name, vit("avg"), **FAST.get(name, {})).attribute(images, target=[1, 2, 3])).all()
    with pytest.raises(ValueError, match="global_pool='max'"):
        AttentionRollout(vit("max")).attribute(images[:1])


def test_quirks_switch_changes_dix_on_a_vit(images):
    model = tiny_vit()
    quirks = DIX(model, n_steps=3).attribute(images, target=1)
    papers = DIX(model, n_steps=3, reference_quirks=False).attribute(images, target=1)
    assert not torch.allclose(quirks, papers)


def test_noise_tunnel_wraps_map_methods(images):
    nt = NoiseTunnel(GradCAM(tiny_cnn())).attribute(images[:2], nt_samples=2, stdevs=0.1, target=[1, 2])
    assert nt.shape == images[:2].shape


def test_to_map_conventions():
    attr = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(to_map(attr), torch.tensor([[[4.0, 2.5]]]))
    with pytest.raises(ValueError, match="attributions"):
        to_map(torch.zeros(2, 2))


def test_stage_discovery_on_models_without_feature_info():
    import torchvision

    from captum_ltx._cnn import cnn_stages, last_stage

    x = torch.randn(1, 3, 64, 64)
    # torchvision ResNets downsample inside layer4's first block, whose shortcut also reads layer3
    for build in (torchvision.models.resnet18, torchvision.models.resnet50):
        model = build(weights=None).eval()
        assert cnn_stages(model, x) == ("layer3", "layer4") and last_stage(model, x) == "layer4"
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    for name in ("gradcam", "iia", "dix"):
        assert methods.create(name, model, **FAST.get(name, {})).attribute(x, target=1).shape == x.shape
    # a model that never downsamples: the last spatial layer, and the latest layer before it that separates it
    flat = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()
    assert cnn_stages(flat, x[:, :, :16, :16]) == ("2", "3") and last_stage(flat, x) == "3"
    for name in ("gradcam", "iia", "iia3", "dix"):
        assert methods.create(name, flat, **FAST.get(name, {})).attribute(x[:, :, :16, :16], target=1).shape == (1, 3, 16, 16)


def test_stage_discovery_says_what_to_pass_when_nothing_separates():
    from captum_ltx._cnn import cnn_stages

    class SkipToInput(torch.nn.Module):
        """Every layer's output is added to the input again before the classifier: none separates it."""

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.b = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc((self.b(self.a(x)) + x).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="pass `layers`"):
        cnn_stages(SkipToInput().eval(), torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("variant", [2, 3])
def test_integration_points_run_only_the_network_after_their_stage(variant, monkeypatch):
    import torchvision

    from captum_ltx import _cnn

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    runner = _cnn.StageRunner(model, x, ())
    _, outputs = runner.capture(x, ["layer3"], ())
    stem_calls = []
    handle = model.conv1.register_forward_hook(lambda *a: stem_calls.append(1))
    logits, layer4 = runner.run_from("layer3", outputs["layer3"], (), capture="layer4")
    handle.remove()
    assert stem_calls == [1]  # the once-per-call check against a full forward; the point itself ran from layer3
    torch.testing.assert_close(logits, model(x))
    assert layer4.shape == (1, 512, 2, 2)
    traced = IIA(model, variant=variant, n_steps=2, normalize=False).attribute(x, target=1)
    monkeypatch.setattr(_cnn, "traced_tail", lambda *a: None)  # the stand-in image instead
    assert IIA(model, variant=variant, n_steps=2, normalize=False).layers.cnn(x, ()) == ("layer3", "layer4")
    torch.testing.assert_close(traced, IIA(model, variant=variant, n_steps=2, normalize=False).attribute(x, target=1))


class GlobalPoolNet(torch.nn.Module):
    """A 1x1 convolution, a global average pool and a linear layer: GradCAM's weights are known."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_gradcam_is_its_formula_and_captums_layer_gradcam():
    from captum.attr import LayerGradCam

    from captum_ltx._maps import min_max

    torch.manual_seed(0)
    model = GlobalPoolNet().eval()
    x = torch.randn(2, 3, 8, 8)
    targets = [0, 2]
    with torch.no_grad():
        activations = model.features(x)
    # d logit_c / d A_k(i, j) = W[c, k] / (h w) everywhere, so each channel's weight (the gradient's
    # spatial mean, as Grad-CAM and pytorch-grad-cam take it) is W[c, k] / 64
    weights = model.fc.weight.detach()[targets] / 64
    cam = (weights[:, :, None, None] * activations).sum(dim=1).clamp_min(0)
    raw = GradCAM(model, layer="features", normalize=False).attribute(x, target=targets)
    torch.testing.assert_close(raw, cam[:, None].expand_as(x))
    captum = LayerGradCam(model, model.features).attribute(x, target=torch.tensor(targets), relu_attributions=True)
    torch.testing.assert_close(raw[:, :1], captum)
    scaled = GradCAM(model, layer="features").attribute(x, target=targets)
    torch.testing.assert_close(scaled[:, 0], min_max(cam))


def test_every_registry_refuses_a_taken_name_and_lists_the_known_ones():
    from captum_ltx.benchmark.tracks import TRACKS
    from captum_ltx.datasets import DATASETS
    from captum_ltx.methods import METHODS
    from captum_ltx.models import MODELS

    for registry, taken in ((METHODS, "gradcam"), (MODELS, "fashion_vit"), (TRACKS, "fashion-two"), (DATASETS, "tuxpaint")):
        with pytest.raises(ValueError, match=f"{registry.kind} '{taken}' is registered already"):
            registry.add(taken, registry.get(taken))
        with pytest.raises(ValueError, match=f"unknown {registry.kind} 'nope'; available: .*{taken}"):
            registry.get("nope")


class TwoStages(torch.nn.Module):
    """Penultimate stage ``a``, last stage ``b``, a head whose gradient depends on ``b``'s output."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 2, 1)
        self.b = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.Tanh())
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.fc((self.b(self.a(x)) ** 2).mean(dim=(2, 3)))


def test_iia3_is_its_formula_point_by_point():
    torch.manual_seed(0)
    model = TwoStages().eval()
    x, target, n = torch.randn(1, 3, 4, 4), 2, 3
    ours = IIA(model, variant=3, n_steps=n, layers=("a", "b"), normalize=False).attribute(x, target=target)
    alpha = [k / n for k in range(n + 1)]
    with torch.no_grad():
        u = [model.a(a * x) for a in alpha]  # the input path from the zero baseline
    r = torch.stack(u).amin(dim=0)
    expected = torch.zeros(4, 4)
    for j in alpha:
        with torch.no_grad():
            t = [model.b(r + j * (uk - r)) for uk in u]
        s = torch.stack(t).amin(dim=0)
        for tk in t:
            for l in alpha:
                z = (s + l * (tk - s)).requires_grad_(True)
                (g,) = torch.autograd.grad(model.fc((z**2).mean(dim=(2, 3)))[0, target], z)
                expected += (g * z.detach().clamp_min(0)).clamp_min(0)[0].sum(dim=0)
    torch.testing.assert_close(ours[0, 0], expected, rtol=1e-4, atol=1e-6)


def test_sobol_recovers_the_total_indices_of_an_additive_model():
    from captum_ltx import Sobol

    # four levels of weight, four cells each: the total index of a cell of an additive model of
    # independent uniform masks is w_c^2 / sum w^2 (0, 1/56, 4/56, 9/56)
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0]).repeat(4)[torch.randperm(16, generator=torch.Generator().manual_seed(0))].view(4, 4)
    model = WeightedPixels(weights.double())
    x = torch.ones(1, 3, 4, 4, dtype=torch.float64)
    sobol = Sobol(model, grid_size=4, n_designs=256, normalize=False)
    assert sobol.forward_passes == 256 * (16 + 2)
    indices = sobol.attribute(x, target=0)[0, 0]
    truth = weights.double() ** 2 / (weights.double() ** 2).sum()
    torch.testing.assert_close(indices, truth, atol=0.005, rtol=0.05)  # 0.0036 at most (1024 designs: 0.0003)
    means = [float(indices[weights == w].mean()) for w in (0.0, 1.0, 2.0, 3.0)]
    assert means == sorted(means) and means[0] < 1e-9  # a cell the model ignores explains nothing
    torch.testing.assert_close(sobol.attribute(x, target=0), indices[None, None].expand(1, 3, 4, 4))  # deterministic


def test_sobol_options_are_checked():
    from captum_ltx import Sobol

    with pytest.raises(ValueError, match="`n_designs` must be a power of two"):
        Sobol(tiny_cnn(), n_designs=48)
    with pytest.raises(ValueError, match="`grid_size` must be an int >= 1"):
        Sobol(tiny_cnn(), grid_size=0)
    with pytest.raises(ValueError, match="`n_designs`=2 gives every cell an index of 0 without scrambling"):
        Sobol(tiny_cnn(), n_designs=2)
    weights = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    two = Sobol(WeightedPixels(weights), grid_size=2, n_designs=2, scramble=True, normalize=False)
    assert two.attribute(torch.ones(1, 3, 2, 2, dtype=torch.float64), target=0).abs().sum() > 0
    scrambled = [Sobol(tiny_cnn(), grid_size=2, n_designs=4, scramble=True, seed=s).masks for s in (1, 1, 2)]
    assert torch.equal(scrambled[0], scrambled[1]) and not torch.equal(scrambled[0], scrambled[2])


def _vit_by_hand(model, x, replace):
    """The timm ViT's forward written out, with block ``b``'s attention probabilities replaced by
    ``replace[b]``; returns the logits and every block's probabilities."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    attentions = []
    for b, block in enumerate(model.blocks):
        attn = block.attn
        y = block.norm1(t)
        q, k, v = attn.qkv(y).reshape(*y.shape[:2], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        probabilities = (attn.q_norm(q) * attn.scale @ attn.k_norm(k).transpose(-2, -1)).softmax(dim=-1)
        if b in replace:  # a constant: no gradient reaches this block's queries and keys
            probabilities = replace[b].detach().requires_grad_(True)
        attentions.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(*y.shape[:2], -1)
        t = t + block.ls1(attn.proj(attn.norm(mixed)))
        t = t + block.ls2(block.mlp(block.norm2(t)))
    return model.forward_head(model.norm(t)), attentions


def test_vit_dix_is_its_formula_point_by_point():
    torch.manual_seed(0)
    model = tiny_vit().double()  # float64: the two sum in other orders
    x, target, n = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64), 2, 3
    ours = DIX(model, n_steps=n, normalize=False).attribute(x, target=target)[0, 0]
    with torch.no_grad():
        _, clean = _vit_by_hand(model, x, {})
    last = len(model.blocks) - 1
    grid = IMAGE // 8  # patch size 8
    expected = torch.zeros(grid, grid, dtype=torch.float64)
    for block in (last, last - 1):  # the released code scales the *last* block's attention in both
        relevance = [torch.zeros_like(a[:, 0]) for a in clean]
        for j in range(n + 1):
            logits, attentions = _vit_by_hand(model, x, {block: clean[last] * j / n})
            grads = torch.autograd.grad(logits[0, target], attentions)
            for r, a, g in zip(relevance, attentions, grads):
                r += (g * a).clamp_min(0).mean(dim=1) / (n + 1)
        joint = torch.eye(relevance[0].shape[-1], dtype=torch.float64)
        for r in relevance:  # rollout: row-normalised A + I, first block first
            step = r[0] + torch.eye(r.shape[-1], dtype=torch.float64)
            joint = (step / step.sum(dim=-1, keepdim=True)) @ joint
        expected += joint[0, 1:].reshape(grid, grid)  # the class token's row over the patches
    upsampled = F.interpolate(expected[None, None], size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, upsampled[0, 0], rtol=1e-9, atol=1e-12)
