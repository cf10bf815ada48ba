import dataclasses
import json
import os

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from captum_ltx import LTX, Explainer, LTXObjective, pretrain
from captum_ltx.objective import DEFAULT_FINETUNING_OBJECTIVE
from conftest import IMAGE, NUM_CLASSES, assert_unchanged, snapshot, tiny_cnn, tiny_vit

SETTINGS = dict(epochs=3, batch_size=4, lr=5e-3, seed=0, progress=False)


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, IMAGE, IMAGE, generator=g), torch.randint(0, 5, (n,), generator=g))


class Interrupting(Dataset):
    """Raises after ``limit`` items, as a Ctrl-C in the middle of an epoch would."""

    def __init__(self, base, limit):
        self.base, self.limit, self.seen = base, limit, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.seen += 1
        if self.seen > self.limit:
            raise KeyboardInterrupt
        return self.base[i]


def test_pretrain_keeps_best_epoch_and_leaves_model_unchanged(tmp_path):
    model = tiny_vit()
    before = snapshot(model)
    explainer = pretrain(model, data(), val_data=data(6, seed=1), checkpoint_dir=tmp_path, **SETTINGS)
    assert_unchanged(before, model)
    training = explainer.config["training"]
    aucs = [r["val_pos_auc"] for r in training["history"]]
    assert len(aucs) == 3 and training["best_val_pos_auc"] == min(aucs)
    assert training["best_epoch"] == aucs.index(min(aucs)) + 1
    assert {"best", "last", "state.json", "optimizer.safetensors"} <= set(os.listdir(tmp_path))
    best = Explainer.load(tmp_path / "best", model)
    for k, v in explainer.state_dict().items():
        assert torch.equal(v, best.state_dict()[k]), k
    assert LTX(model, explainer, finetune_steps=0).attribute(data(2).tensors[0]).shape == (2, 3, IMAGE, IMAGE)


@pytest.mark.parametrize("target", ["label", "sampled"])
def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, target):
    model = tiny_cnn()
    settings = dict(SETTINGS, target=target)
    straight = pretrain(model, data(), **settings)
    with pytest.raises(KeyboardInterrupt):
        pretrain(model, Interrupting(data(), limit=12 + 6), checkpoint_dir=tmp_path, **settings)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
    torch.rand(5)  # the global generator moves on, as in a new process; the drawn classes must not
    resumed = pretrain(model, data(), checkpoint_dir=tmp_path, **settings)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], msg=k)
    assert resumed.config["training"]["history"] == straight.config["training"]["history"]


def test_resume_with_other_settings_is_refused(tmp_path):
    model = tiny_cnn()
    pretrain(model, data(), checkpoint_dir=tmp_path, **dict(SETTINGS, epochs=1))
    with pytest.raises(ValueError, match="other settings"):
        pretrain(model, data(), checkpoint_dir=tmp_path, **dict(SETTINGS, epochs=2))


def test_pretrain_bad_arguments():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="`epochs`"):
        pretrain(model, data(), epochs=0)
    with pytest.raises(ValueError, match="`target`"):
        pretrain(model, data(), target="gt")
    with pytest.raises(ValueError, match="target='predicted'"):
        pretrain(model, data().tensors[0], target="label", **dict(SETTINGS, epochs=1))
    with pytest.raises(TypeError, match="`train_data`"):
        pretrain(model, 3)


def test_the_default_target_is_the_model_prediction_and_labels_must_be_its_classes():
    model = tiny_cnn()
    images = data().tensors[0]
    explainer = pretrain(model, images, **dict(SETTINGS, epochs=1))  # a plain tensor: no labels needed
    assert explainer.config["training"]["target"] == "predicted"
    assert explainer.config["training"]["history"][0]["distinct_targets"] >= 1
    beyond = TensorDataset(images, torch.full((len(images),), NUM_CLASSES + 2))
    with pytest.raises(ValueError, match=f"`target='label'`: label {NUM_CLASSES + 2} is not one of the model's {NUM_CLASSES} classes"):
        pretrain(model, beyond, target="label", **dict(SETTINGS, epochs=1))
    assert pretrain(model, beyond, **dict(SETTINGS, epochs=1)).config["training"]["target"] == "predicted"


def test_class_conditioned_explainer_learns_a_mask_per_class(tmp_path):
    model = tiny_cnn()
    before = snapshot(model)
    explainer = pretrain(
        model, data(), explainer_options={"num_classes": 5}, target="sampled", **dict(SETTINGS, epochs=2)
    )
    assert_unchanged(before, model)
    assert explainer.config["num_classes"] == 5 and explainer.config["training"]["target"] == "sampled"
    assert explainer.class_offset.detach().abs().max() > 0.01
    x = data(2, seed=4).tensors[0]
    with torch.no_grad():
        per_class = torch.stack([explainer(x, target=torch.full((2,), c)) for c in range(5)])
    assert per_class.std(dim=0).max() > 1e-4  # the classes got different masks
    with pytest.raises(ValueError, match="`target` is needed"):
        explainer(x)
    with pytest.raises(ValueError, match=r"`target` values must lie in \[0, 5\)"):
        explainer(x, target=torch.tensor([0, 5]))
    explainer.save(tmp_path / "e")
    ltx = LTX(model, str(tmp_path / "e"), finetune_steps=0)
    before = snapshot(model)
    maps = torch.stack([ltx.attribute(x, target=c)[:, :1] for c in (1, 3)])
    assert_unchanged(before, model)
    finetuned = LTX(model, str(tmp_path / "e"), finetune_steps=2).attribute(x, target=[1, 3])
    assert finetuned.shape == x.shape
    assert_unchanged(before, model)
    with torch.no_grad():
        assert torch.allclose(maps[1], explainer(x, target=torch.tensor([3, 3])), atol=1e-6)
    assert not torch.allclose(maps[0], maps[1])
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        Explainer.from_model(model, num_classes=0)


def test_the_pretraining_objective_is_recorded_and_resumed(tmp_path):
    model = tiny_cnn()
    objective = LTXObjective(complement_weight=1.0, baseline="mix", tv_weight=0.1)
    settings = dict(SETTINGS, epochs=2, objective=objective)
    straight = pretrain(model, data(), **settings)
    assert straight.config["training"]["objective"] == {"complement_weight": 1.0, "baseline": "mix", "tv_weight": 0.1}
    assert straight.config["training"]["mask_weight"] == 3.0
    with pytest.raises(KeyboardInterrupt):
        pretrain(model, Interrupting(data(), limit=12 + 6), checkpoint_dir=tmp_path, **settings)
    resumed = pretrain(model, data(), checkpoint_dir=tmp_path, **settings)  # the same black / blur draws
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], msg=k)
    plain = pretrain(model, data(), **dict(SETTINGS, epochs=2))
    assert plain.config["training"]["objective"] == {"baseline": "mix"}  # DEFAULT_PRETRAINING_OBJECTIVE
    reference = pretrain(model, data(), **dict(SETTINGS, epochs=1, objective=LTXObjective()))
    assert "objective" not in reference.config["training"]  # as written before objectives were recorded
    # LTX will finetune with the library's default objective at the pretraining's mask weight
    assert LTX(model, plain).objective == dataclasses.replace(DEFAULT_FINETUNING_OBJECTIVE, mask_weight=3.0)
    heavy = pretrain(model, data(), **dict(SETTINGS, epochs=1, mask_weight=10.0))
    assert heavy.config["finetuning"]["objective"] == dataclasses.replace(DEFAULT_FINETUNING_OBJECTIVE, mask_weight=10.0).to_config()
    assert not torch.allclose(plain.head.weight, straight.head.weight)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(model, data(), checkpoint_dir=tmp_path, **dict(settings, objective=LTXObjective()))


def test_snapshots_along_one_run_record_images_and_distinct_targets(tmp_path):
    from captum_ltx import PretrainingCfg

    cfg = PretrainingCfg(epochs=2, batch_size=4, lr=5e-3, target="predicted", schedule="constant", warmup=0.0, snapshots=(8, 20))
    model = tiny_cnn()
    explainer = pretrain(model, data(), cfg=cfg, checkpoint_dir=tmp_path, progress=False)
    assert explainer.config["training"]["schedule"] == "constant"
    history = explainer.config["training"]["history"]
    with torch.no_grad():
        predicted = model(data().tensors[0]).argmax(1)
    assert history[-1]["distinct_targets"] == len(set(predicted.tolist()))
    for images in (8, 20):
        snap = Explainer.load(tmp_path / "snapshots" / str(images), model)
        assert snap.config["finetuning"]["objective"]["baseline"] == "mix"  # what LTX finetunes it with
        assert snap.config["training"]["images"] == images
        assert 1 <= snap.config["training"]["distinct_targets"] <= history[-1]["distinct_targets"]
    final = Explainer.load(tmp_path / "last", model).state_dict()
    assert any(not torch.equal(v, final[k]) for k, v in Explainer.load(tmp_path / "snapshots" / "8", model).state_dict().items())


def test_keyword_settings_are_the_fields_of_the_settings_dataclass():
    from captum_ltx import PretrainingCfg

    with pytest.raises(TypeError, match="PretrainingCfg"):
        pretrain(tiny_cnn(), data(), epoch=2)
    with pytest.raises(ValueError, match="`schedule`"):
        PretrainingCfg(schedule="cosine")
    with pytest.raises(ValueError, match="`snapshots`"):
        PretrainingCfg(snapshots=(0,))
    with pytest.raises(TypeError, match="`cfg`"):
        pretrain(tiny_cnn(), data(), cfg={"epochs": 1})
    with pytest.raises(ValueError, match="`checkpoint_dir`"):
        pretrain(tiny_cnn(), data(), snapshots=(8,))


def test_bfloat16_autocast_pretraining_is_recorded_and_learns_near_float32(tmp_path):
    from captum_ltx import PretrainingCfg

    settings = dict(epochs=1, batch_size=4, lr=5e-3, target="predicted", warmup=0.0)
    model = tiny_cnn()
    before = snapshot(model)
    exact = pretrain(model, data(), cfg=PretrainingCfg(**settings), checkpoint_dir=tmp_path / "fp32", progress=False)
    fast = pretrain(model, data(), cfg=PretrainingCfg(**settings, autocast=True), checkpoint_dir=tmp_path / "bf16", progress=False)
    assert_unchanged(before, model)
    assert fast.config["training"]["autocast"] == "bfloat16" and "autocast" not in exact.config["training"]
    assert all(v.dtype == exact.state_dict()[k].dtype for k, v in fast.state_dict().items())  # weights stay float32
    moved = [(fast.state_dict()[k] - v).abs().max().item() for k, v in exact.state_dict().items() if v.is_floating_point()]
    assert 0 < max(moved) < 0.05
    with pytest.raises(TypeError, match="`autocast`"):
        PretrainingCfg(autocast="bf16")
