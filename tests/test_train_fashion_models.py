"""benchmarks/fashion_training/train_fashion_models.py on stand-in Fashion-MNIST files: training, and continuing a saved model."""

import ast
import importlib.util
import json
import os
import sys

import pytest
from safetensors.torch import load_file

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "fashion_training", "train_fashion_models.py")


def load_script():
    spec = importlib.util.spec_from_file_location("train_fashion_models", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["train_fashion_models.py", *args])
    load_script().main()


def config(path) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def test_init_continues_a_saved_model(fake_fashion, tmp_path, monkeypatch, capsys):
    small = ["--train-size", "64", "--batch-size", "32", "--eval-size", "20", "--data-root", fake_fashion]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run(monkeypatch, "--arch", "cnn", "--epochs", "1", "--lr", "1e-3", "--out", first, *small)
    run(monkeypatch, "--arch", "cnn", "--epochs", "2", "--lr", "1e-4", "--init", first, "--out", second, *small)
    before, after = config(first), config(second)
    # epochs, and so the seeds of their training scenes, carry on after the first run's
    assert [h["epoch"] for h in after["validation_history"]] == [1, 2, 3]
    assert after["validation_history"][0] == before["validation_history"][0]
    assert after["initialised_from"] == {"made_by": before["made_by"], "test_accuracy": before["test_accuracy"]}
    assert f"--init {first}" in after["made_by"] and "--data-root" not in after["made_by"]
    # the continued run starts from the first run's weights: their validation accuracy, measured again, is the first's
    reported = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{first}: validation "))
    kept = {k: v for k, v in before["validation_history"][0].items() if k != "epoch"}
    assert ast.literal_eval(reported.split("validation ", 1)[1]) == kept
    assert set(load_file(os.path.join(second, "model.safetensors"))) == set(load_file(os.path.join(first, "model.safetensors")))
    # a model continued twice keeps the whole chain of runs
    third = str(tmp_path / "third")
    run(monkeypatch, "--arch", "cnn", "--epochs", "1", "--lr", "1e-4", "--init", second, "--out", third, *small)
    assert config(third)["initialised_from"] == {"made_by": after["made_by"], "test_accuracy": after["test_accuracy"],
                                                 "initialised_from": after["initialised_from"]}
    assert [h["epoch"] for h in config(third)["validation_history"]] == [1, 2, 3, 4]

    with pytest.raises(SystemExit, match="--init .* do not fit the --arch to train"):
        run(monkeypatch, "--arch", "vit", "--epochs", "1", "--init", first, "--out", str(tmp_path / "vit"), *small)
    with pytest.raises(SystemExit, match="--init .* must be a folder"):
        run(monkeypatch, "--arch", "cnn", "--epochs", "1", "--init", str(tmp_path), "--out", str(tmp_path / "none"), *small)


def test_init_carries_weights_into_an_architecture_they_fit(fake_fashion, tmp_path, monkeypatch, capsys):
    import torch
    from torch import nn

    from captum_ltx.models import create_timm_model, load_timm_model

    small = ["--train-size", "32", "--batch-size", "32", "--eval-size", "20", "--data-root", fake_fashion]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run(monkeypatch, "--arch", "cnn-2-blocks", "--epochs", "1", "--out", first, *small)
    run(monkeypatch, "--arch", "cnn-2-blocks-stem2", "--epochs", "1", "--lr", "1e-4", "--init", first, "--out", second, *small)
    before, after = config(first), config(second)
    assert after["edits"] == ["stem_without_pool"] and "edits" not in before
    assert after["initialised_from"]["architecture"] == {"architecture": "resnet18", "kwargs": before["kwargs"], "edits": []}
    assert after["kwargs"]["output_stride"] == 16 and before["kwargs"]["output_stride"] == 8
    # the run starts from the first model's weights in the new architecture: the validation accuracy it
    # reports before training is theirs, measured again in that architecture
    carried = create_timm_model("resnet18", after["kwargs"], ["stem_without_pool"])
    carried.load_state_dict(load_file(os.path.join(first, "model.safetensors")))
    reported = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{first}: validation "))
    assert ast.literal_eval(reported.split("validation ", 1)[1]) == load_script().accuracies(carried, 0, 10, split="val", root=fake_fashion)
    # the saved model rebuilds with its edit: a stride-2 stem, and still an 8 x 8 last map from 64 px scenes
    model = load_timm_model(second)
    assert isinstance(model.maxpool, nn.Identity) and isinstance(load_timm_model(first).maxpool, nn.MaxPool2d)
    assert model.forward_features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)


def test_init_carries_a_vit_into_patches_that_read_its_stem_before_the_pool(fake_fashion, tmp_path, monkeypatch, capsys):
    import torch
    from torch import nn
    from torch.nn import functional as F

    from captum_ltx.models import load_timm_model

    small = ["--train-size", "32", "--batch-size", "32", "--eval-size", "20", "--data-root", fake_fashion]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run(monkeypatch, "--arch", "vit-hybrid-6-blocks", "--epochs", "1", "--out", first, *small)
    script = load_script()
    pooled = load_timm_model(first)
    name, kwargs = script.ARCHITECTURES["vit-hybrid-6-blocks-stem2"]
    unpooled = script.create_timm_model(name, {**kwargs, "num_classes": 10}, script.ARCHITECTURE_EDITS["vit-hybrid-6-blocks-stem2"])
    unpooled.load_state_dict(script._unpool_patches(unpooled, pooled.state_dict()))
    # each token starts as the pooled model's projection of the 2 x 2 average of the stem's map
    stem = unpooled.patch_embed.backbone(torch.randn(2, 3, 64, 64))
    assert stem.shape[-2:] == (32, 32)
    with torch.no_grad():
        torch.testing.assert_close(unpooled.patch_embed.proj(stem), pooled.patch_embed.proj(F.avg_pool2d(stem, 2)), atol=1e-5, rtol=1e-5)
    assert unpooled.patch_embed.grid_size == pooled.patch_embed.grid_size == (8, 8)
    assert (unpooled.patch_embed.patch_size, unpooled.patch_embed.feature_size) == ((4, 4), (32, 32))

    run(monkeypatch, "--arch", "vit-hybrid-6-blocks-stem2", "--epochs", "1", "--lr", "1e-4", "--init", first, "--out", second, *small)
    after = config(second)
    assert after["edits"] == ["vit_stem_without_pool"] and after["initialised_from"]["architecture"]["edits"] == []
    model = load_timm_model(second)
    assert isinstance(model.patch_embed.backbone.pool, nn.Identity) and model.patch_embed.proj.kernel_size == (4, 4)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_init_deepens_a_model_by_blocks_that_start_as_identities(fake_fashion, tmp_path, monkeypatch, capsys):
    import torch

    from captum_ltx.models import load_timm_model

    small = ["--train-size", "32", "--batch-size", "32", "--eval-size", "20", "--data-root", fake_fashion]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run(monkeypatch, "--arch", "vit-hybrid", "--epochs", "1", "--out", first, *small)
    script = load_script()
    shallower = load_timm_model(first).eval()
    # before any training the 6-block model computes what the 4-block one does
    name, kwargs = script.ARCHITECTURES["vit-hybrid-6-blocks"]
    deeper = script.create_timm_model(name, {**kwargs, "num_classes": 10}, [])
    deeper.load_state_dict(script._deepen(deeper, shallower.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(deeper.eval()(x), shallower(x), atol=1e-5, rtol=1e-5)
    assert all(int(torch.count_nonzero(deeper.blocks[i].mlp.fc2.weight)) == 0 for i in (4, 5))
    assert int(torch.count_nonzero(deeper.blocks[4].mlp.fc1.weight)) > 0  # the rest of a new block is initialised as usual

    capsys.readouterr()
    run(monkeypatch, "--arch", "vit-hybrid-6-blocks", "--epochs", "1", "--lr", "1e-4", "--init", first, "--out", second, *small)
    reported = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{first}: validation "))
    assert ast.literal_eval(reported.split("validation ", 1)[1]) == script.accuracies(shallower, 0, 10, split="val", root=fake_fashion)
    after = config(second)
    assert after["kwargs"]["depth"] == 6 and after["initialised_from"]["architecture"]["kwargs"]["depth"] == 4
    assert len(load_timm_model(second).blocks) == 6
    # a deeper model whose weights are not whole new blocks is refused, as is a shallower one
    with pytest.raises(SystemExit, match="--init .* do not fit the --arch to train"):
        run(monkeypatch, "--arch", "vit-hybrid", "--epochs", "1", "--init", second, "--out", str(tmp_path / "shallower"), *small)
    with pytest.raises(KeyError, match="partly"):
        weights = shallower.state_dict()
        weights["blocks.4.norm1.weight"] = deeper.state_dict()["blocks.4.norm1.weight"]
        script._deepen(deeper, weights)


def test_evaluate_measures_a_saved_model_again(fake_fashion, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "model")
    run(monkeypatch, "--arch", "cnn", "--epochs", "1", "--train-size", "32", "--batch-size", "32", "--eval-size", "20",
        "--data-root", fake_fashion, "--out", out)
    capsys.readouterr()
    run(monkeypatch, "--evaluate", out, "--eval-size", "20", "--data-root", fake_fashion)
    assert ast.literal_eval(capsys.readouterr().out.strip()) == config(out)["test_accuracy"]
    run(monkeypatch, "--evaluate", out, "--eval-size", "20", "--data-root", fake_fashion, "--misses")
    accuracy, misses, intruders = capsys.readouterr().out.strip().splitlines()
    per_class = ast.literal_eval(misses.split(": ", 1)[1])
    assert len(per_class) == 10 and all(0 <= v <= 1 for v in per_class.values())
    shares = ast.literal_eval(intruders.split(": ", 1)[1])
    assert set(shares) == {"misread", "hedged"} and 0 <= shares["misread"] + shares["hedged"] <= 1
    # every two-item scene is a hit exactly when no item is missed
    assert (ast.literal_eval(accuracy)["two_items_both_in_top2"] == 1) == (max(per_class.values()) == 0)


def test_two_item_misses_tell_a_misread_item_from_a_hedge_on_the_other():
    import torch

    script = load_script()
    tshirt, trouser, pullover, sandal, coat, shirt, sneaker, bag, boot = 0, 1, 2, 5, 4, 6, 7, 8, 9

    def scene(wanted, top2):
        row = torch.zeros(10, dtype=torch.bool)
        row[list(wanted)] = True
        logits = torch.zeros(10)
        logits[list(top2)] = torch.tensor([2.0, 1.0])
        return logits, row

    scenes = [
        scene((shirt, bag), (bag, tshirt)),  # the shirt read as a T-shirt: misread
        scene((sneaker, coat), (coat, sandal)),  # the sneaker read as a sandal: misread
        scene((shirt, bag), (shirt, pullover)),  # both places on the shirt: hedged
        scene((sandal, sneaker), (sandal, boot)),  # a shoe for a shoe next to a shoe: neither
        scene((shirt, trouser), (trouser, bag)),  # a bag for a shirt: neither
        scene((shirt, trouser), (bag, boot)),  # both lost: neither
        scene((shirt, trouser), (trouser, shirt)),  # both kept
    ]
    logits, wanted = (torch.stack(t) for t in zip(*scenes))
    lost, misread, hedged = script._two_item_misses(logits, wanted)
    assert lost.sum(dim=1).tolist() == [1, 1, 1, 1, 1, 2, 0]
    assert misread.tolist() == [True, True, False, False, False, False, False]
    assert hedged.tolist() == [False, False, True, False, False, False, False]


def test_ema_keeps_the_averaged_weights(fake_fashion, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "model")
    command = ["--arch", "cnn", "--epochs", "1", "--train-size", "64", "--batch-size", "32", "--eval-size", "20",
               "--data-root", fake_fashion, "--ema", "0.5", "--out", out]
    run(monkeypatch, *command)
    kept, averaged, trained = (load_file(os.path.join(path, "model.safetensors")) for path in (out, out + ".work/ema", out + ".work/last"))
    # one epoch is always kept: its weights are the average, which lags behind the trained ones
    assert all(kept[k].equal(averaged[k]) for k in kept)
    assert any(not kept[k].equal(trained[k]) for k in kept if kept[k].is_floating_point())
    assert "--ema 0.5" in config(out)["made_by"]
    # the same command again resumes from the saved state, the average included, and keeps the same model
    run(monkeypatch, *command)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert all(kept[k].equal(v) for k, v in load_file(os.path.join(out, "model.safetensors")).items())


def test_distillation_loss_is_the_tempered_kl_divergence():
    import torch

    distillation_loss = load_script()._distillation_loss
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0, abs=1e-6)
    p = torch.softmax(teacher / 3, 1)
    expected = 9 * (p * (p.log() - torch.log_softmax(student / 3, 1))).sum(1).mean()
    assert float(distillation_loss(student, teacher, 3.0)) == pytest.approx(float(expected), rel=1e-5)
    # its gradient moves the student's predictions toward the teacher's
    student.requires_grad_(True)
    distillation_loss(student, teacher, 1.0).backward()
    moved = student.detach() - 0.5 * student.grad
    assert distillation_loss(moved, teacher, 1.0) < distillation_loss(student.detach(), teacher, 1.0)


def test_teacher_and_mirroring_change_training_and_are_recorded(fake_fashion, tmp_path, monkeypatch, capsys):
    small = ["--arch", "cnn", "--epochs", "1", "--train-size", "64", "--batch-size", "32", "--eval-size", "20", "--data-root", fake_fashion]
    teacher = str(tmp_path / "teacher")
    run(monkeypatch, *small, "--lr", "1e-2", "--out", teacher)
    runs = {
        "plain": [],
        "distilled": ["--teacher", teacher, "--distill-weight", "0.7"],
        "mirrored": ["--hflip"],
        "mirrored again": ["--hflip"],
    }
    for name, options in runs.items():
        run(monkeypatch, *small, "--out", str(tmp_path / name), *options)
    weights = {name: load_file(os.path.join(tmp_path, name, "model.safetensors")) for name in runs}

    def same(a, b):
        return all(weights[a][k].equal(weights[b][k]) for k in weights[a])

    assert not same("plain", "distilled") and not same("plain", "mirrored")
    assert same("mirrored", "mirrored again")  # the mirrored scenes are drawn from the seed
    distilled = config(tmp_path / "distilled")
    assert f"--seed 0 --out {tmp_path / 'distilled'} --teacher {teacher} --distill-weight 0.7 --distill-temperature 2.0" in distilled["made_by"]
    assert distilled["distilled_from"] == {"path": teacher, "architecture": "resnet18", "made_by": config(teacher)["made_by"],
                                           "test_accuracy": config(teacher)["test_accuracy"]}
    assert config(tmp_path / "mirrored")["made_by"].endswith(" --hflip") and "distilled_from" not in config(tmp_path / "mirrored")

    capsys.readouterr()
    for options, message in ((["--distill-weight", "0.5"], "need --teacher"), (["--teacher", teacher, "--distill-weight", "0"], "--distill-weight must be in"),
                             (["--teacher", teacher, "--distill-temperature", "-1"], "--distill-temperature must be positive")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *small, "--out", str(tmp_path / "refused"), *options)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--teacher .* must be a folder"):
        run(monkeypatch, *small, "--out", str(tmp_path / "refused"), "--teacher", str(tmp_path))
    other = config(teacher)
    other["kwargs"]["pretrained_cfg_overlay"]["mean"] = [0.485, 0.456, 0.406]
    os.makedirs(tmp_path / "imagenet-teacher")
    with open(tmp_path / "imagenet-teacher" / "config.json", "w") as f:
        json.dump(other, f)
    with pytest.raises(SystemExit, match="--teacher .* must expect scenes normalised with"):
        run(monkeypatch, *small, "--out", str(tmp_path / "refused"), "--teacher", str(tmp_path / "imagenet-teacher"))
