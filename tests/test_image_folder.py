"""Pretraining data from a user's folder of images: ImageFolder trees, flat folders, unreadable files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from captum_ltx import cli, pretrain
from captum_ltx.datasets import ImageFolderData, ImagesAndLabels, create_dataset
from captum_ltx.datasets.image_folder import UNLABELLED
from conftest import tiny_cnn


def write_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)


def to_tensor(image):
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1) / 255


def test_class_folders_give_labels_and_unreadable_files_are_skipped(tmp_path):
    write_images(tmp_path / "cat", ["a.jpg", "b.png"])
    write_images(tmp_path / "dog", ["c.jpg"])
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    data = ImageFolderData(str(tmp_path), to_tensor)
    assert data.classes == ["cat", "dog"] and len(data) == 4
    assert sorted(data.labels) == [0, 0, 1, 1]
    broken = [p.endswith("broken.jpg") for p in data.paths].index(True)
    with pytest.warns(UserWarning, match="skipped unreadable image .*broken.jpg.*1 so far"):
        image, label, mask = data[broken]
    assert image.shape == (3, 16, 16) and mask is None
    assert label == data.labels[(broken + 1) % len(data)]  # the next readable file stands in
    assert len(data.skipped) == data.skipped_count == 1


def test_flat_folders_are_unlabelled_and_splits_are_disjoint(tmp_path):
    write_images(tmp_path, [f"{i}.png" for i in range(10)])
    train, val = (ImageFolderData(str(tmp_path), to_tensor, s, val_size=3, seed=1) for s in ("train", "val"))
    assert len(train) == 7 and len(val) == 3 and not set(train.paths) & set(val.paths)
    assert set(train.labels) == {UNLABELLED} and train.classes == []
    assert len(ImageFolderData(str(tmp_path), to_tensor, "train", val_size=3, length=4)) == 4


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="`data` must be a dataset name or an image folder"):
        ImageFolderData(str(tmp_path / "missing"), to_tensor)
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderData(str(tmp_path), to_tensor)
    write_images(tmp_path, ["a.png"])
    write_images(tmp_path / "cls", ["b.png"])
    with pytest.raises(ValueError, match="mixes images and class folders"):
        ImageFolderData(str(tmp_path), to_tensor)
    with pytest.raises(ValueError, match="`val_size` must be in"):
        ImageFolderData(str(tmp_path / "cls"), to_tensor, "val", val_size=1)


def test_a_folder_pretrains_an_explainer_with_the_models_transforms(tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "images", [f"{i}.jpg" for i in range(6)])
    model = tiny_cnn()
    train = create_dataset(str(tmp_path / "images"), model, "train", val_size=2)
    size = model.pretrained_cfg["input_size"]
    assert train[0][0].shape == size  # resized and normalised for the model, read when asked for
    with pytest.raises(ValueError, match="`target='label'` needs labelled data"):
        pretrain(model, ImagesAndLabels(train), epochs=1, batch_size=2, target="label", progress=False)
    monkeypatch.setattr(cli, "_model", lambda args: tiny_cnn())
    cli.main(["pretrain", "--data", str(tmp_path / "images"), "--val-size", "2", "--batch-size", "2", "--epochs", "1",
              "--target", "predicted", "--out", str(tmp_path / "explainer")])
    config = json.loads((tmp_path / "explainer" / "config.json").read_text())
    assert config["training"]["train_size"] == 4 and config["training"]["val_size"] == 2
    # an unreadable file: skipped, and counted in the epoch's log line
    (tmp_path / "images" / "6.jpg").write_bytes(b"truncated")
    held_out = ImageFolderData(str(tmp_path / "images"), to_tensor, "val", val_size=1).paths
    assert not any(p.endswith("6.jpg") for p in held_out)  # the broken file is in the training split
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        cli.main(["pretrain", "--data", str(tmp_path / "images"), "--val-size", "1", "--batch-size", "2", "--epochs", "1",
                  "--target", "predicted", "--out", str(tmp_path / "again")])
    printed = capsys.readouterr()
    assert "unreadable images skipped so far: 1" in printed.out + printed.err
    # read by DataLoader worker processes (new ones each epoch), the file is counted once in the main process's log
    cli.main(["pretrain", "--data", str(tmp_path / "images"), "--val-size", "1", "--batch-size", "2", "--epochs", "2",
              "--target", "predicted", "--num-workers", "1", "--out", str(tmp_path / "workers")])
    printed = "".join(capsys.readouterr())
    assert [line.endswith("unreadable images skipped so far: 1") for line in printed.splitlines() if line.startswith("epoch")] == [True, True]


def test_any_timm_architecture_with_a_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    from captum_ltx.models import create_model

    torch.manual_seed(0)
    trained = timm.create_model("test_resnet", num_classes=7).eval()
    save_file(trained.state_dict(), tmp_path / "w.safetensors")
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    for path in ("w.safetensors", "w.pth"):
        model = create_model("test_resnet", weights=str(tmp_path / path))
        assert model.num_classes == 7 and not model.training  # the class count comes from the weights
        assert torch.equal(model(x), trained(x))
    with pytest.raises(ValueError, match="do not fit timm's 'test_vit'"):
        create_model("test_vit", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not in captum_ltx.models .* nor in timm"):
        create_model("no_such_net", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="or a timm architecture with `weights`"):
        create_model("test_resnet")
    with pytest.raises(SystemExit, match="`--model`/`--weights`: unknown model 'no_such_net'"):
        cli.main(["pretrain", "--model", "no_such_net", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "e")])
