"""Tuxpaint composites on a small stand-in package tree (the real packages are fetched by set-up)."""

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from captum_ltx.datasets import ImagesAndLabels, create_dataset
from captum_ltx.datasets import tuxpaint
from captum_ltx.datasets.tuxpaint import BACKGROUNDS, TuxpaintComposites, read_stamp_labels, split_assets


@pytest.fixture
def fake_tuxpaint(tmp_path):
    """Every labelled stamp as a 160 x 120 ellipse of one colour (alpha = the ellipse) and every
    background as a grey image, laid out as the packages unpack."""
    share = tmp_path / "usr" / "share" / "tuxpaint"
    yy, xx = np.mgrid[:120, :160]
    ellipse = (((xx - 80) / 80) ** 2 + ((yy - 60) / 60) ** 2) <= 1
    for i, stamp in enumerate(read_stamp_labels()):
        path = share / "stamps" / stamp.path
        path.parent.mkdir(parents=True, exist_ok=True)
        rgba = np.zeros((120, 160, 4), dtype=np.uint8)
        rgba[..., 0] = 255
        rgba[..., 3] = ellipse * 255
        Image.fromarray(rgba, "RGBA").save(path)
    (share / "templates").mkdir(parents=True)
    for name in BACKGROUNDS:
        Image.fromarray(np.full((300, 400, 3), 128, dtype=np.uint8)).save(share / "templates" / f"{name}.jpg")
    return str(tmp_path)


def test_splits_share_no_stamp_class_or_background(fake_tuxpaint):
    parts = {s: split_assets(s, fake_tuxpaint) for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not {x.path for x in parts[a][0]} & {x.path for x in parts[b][0]}
        assert not {x.labels[0] for x in parts[a][0]} & {x.labels[0] for x in parts[b][0]}
        assert not set(parts[a][1]) & set(parts[b][1])
    assert all(parts[s][0] and parts[s][1] for s in parts)


def test_composites_are_deterministic_with_exact_masks(fake_tuxpaint):
    data = TuxpaintComposites("test", length=4, size=64, normalization=((0, 0, 0), (1, 1, 1)), seed=1, root=fake_tuxpaint)
    image, label, mask = data[2]
    again = TuxpaintComposites("test", length=4, size=64, normalization=((0, 0, 0), (1, 1, 1)), seed=1, root=fake_tuxpaint)[2]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[2])
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.bool
    assert label == data.stamp_of(2).labels[0]
    # red ellipse on grey: inside the mask the pixel is the stamp's, outside it is the background's
    # (but for the soft, resampled rim of the alpha channel)
    assert torch.allclose(image[:, mask].mean(dim=1), torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    background = ((image[:, ~mask] - 128 / 255).abs() < 0.02).all(dim=0).float().mean()
    assert background > 0.95
    # the stamp's longest side is 60-90% of the image
    cols = mask.any(dim=0).nonzero()
    assert 0.55 * 64 <= int(cols.max() - cols.min() + 1) <= 0.92 * 64
    other = TuxpaintComposites("test", length=4, size=64, seed=2, root=fake_tuxpaint)[2]
    assert not torch.equal(mask, other[2])


def test_dataset_registry_follows_the_model_config(fake_tuxpaint, monkeypatch):
    import timm

    model = timm.create_model("test_resnet", pretrained=False)
    data = create_dataset("tuxpaint", model, "train", length=2, root=fake_tuxpaint)
    size = timm.data.resolve_data_config({}, model=model)["input_size"][-1]
    image, label = ImagesAndLabels(data)[0]
    assert image.shape == (3, size, size) and isinstance(label, int)
    with pytest.raises(ValueError, match="unknown dataset"):
        create_dataset("nope", model, "train")


def test_missing_packages_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_LTX_DATA", str(tmp_path))
    assert tuxpaint.default_root() == str(tmp_path / "tuxpaint")
    with pytest.raises(ValueError, match="make benchmark-assets"):
        TuxpaintComposites("train")
    with pytest.raises(ValueError, match="`split`"):
        split_assets("training", str(tmp_path))


def test_fashion_scenes_masks_targets_and_splits(fake_fashion):
    from captum_ltx.datasets.fashion_scenes import FashionScenes, read_idx

    assert read_idx(f"{fake_fashion}/t10k-labels-idx1-ubyte.gz").tolist()[:3] == [0, 1, 2]
    two = FashionScenes("test", length=8, items=2, seed=3, root=fake_fashion)
    image, target, masks = two[5]
    assert image.shape == (3, 64, 64) and masks.shape == (2, 64, 64)
    labels = two.labels_of(5)
    assert len(labels) == 2 and labels[0] != labels[1]
    assert target[labels].tolist() == [0.5, 0.5] and float(target.sum()) == pytest.approx(1.0)
    assert masks[0].any() and masks[1].any() and not (masks[0] & masks[1]).any()
    # a 20 px square in a 28 px item scaled to 26-32 px: the mask is a square of 18-23 px
    side = int(masks[0].any(dim=0).sum())
    assert 18 <= side <= 23 and int(masks[0].sum()) == side * int(masks[0].any(dim=1).sum())
    assert torch.equal(image, FashionScenes("test", length=8, items=2, seed=3, root=fake_fashion)[5][0])
    one = FashionScenes("val", length=4, items=1, root=fake_fashion)
    _, target, masks = one[0]
    assert float(target.max()) == 1.0 and not masks[1].any() and masks[0].any()
    assert len(one.labels) == 10_010 and len(FashionScenes("train", length=1, root=fake_fashion).labels) == 50_000


def test_fashion_scenes_bad_input(fake_fashion, tmp_path):
    from captum_ltx.datasets.fashion_scenes import FashionScenes, read_idx

    with pytest.raises(ValueError, match="`items`"):
        FashionScenes("test", items=3, root=fake_fashion)
    with pytest.raises(ValueError, match="`split`"):
        FashionScenes("dev", root=fake_fashion)
    with pytest.raises(ValueError, match="make fashion-assets"):
        FashionScenes("test", root=str(tmp_path / "none"))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="cut short"):
        read_idx(str(tmp_path / "bad"))


def _add_unlabelled_stamps(root, val_word):
    """A noisy (photo-like) stamp, a flat one, a noisy one in a cartoon folder and a noisy one named
    like a val stamp: only the first is an unlabelled photo stamp for training."""
    stamps = pathlib.Path(root) / "usr" / "share" / "tuxpaint" / "stamps"
    rng = np.random.default_rng(0)
    noisy = np.concatenate([rng.integers(0, 256, (130, 150, 3)), np.full((130, 150, 1), 255)], axis=2).astype(np.uint8)
    flat = np.zeros_like(noisy)
    flat[..., 1:] = 255
    for path, pixels in (("extra/rock.png", noisy), ("extra/sign.png", flat), ("extra/cartoon/house.png", noisy),
                         (f"extra/{val_word}_2.png", noisy)):
        (stamps / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGBA").save(stamps / path)


def test_pretraining_scenes_draw_every_photo_stamp_outside_the_held_out_classes(fake_tuxpaint):
    from captum_ltx.datasets.tuxpaint_scenes import TuxpaintScenes, unlabelled_photo_stamps, _name_words

    val_word = sorted(_name_words(split_assets("val", fake_tuxpaint)[0][0].path))[0]
    _add_unlabelled_stamps(fake_tuxpaint, val_word)
    assert [s.path for s in unlabelled_photo_stamps(fake_tuxpaint)] == ["extra/rock.png"]
    scenes = TuxpaintScenes("train", length=40, size=64, seed=3, root=fake_tuxpaint)
    held_out = {s.labels[0] for split in ("val", "test") for s in split_assets(split, fake_tuxpaint)[0]}
    assert "extra/rock.png" in [s.path for s in scenes.stamps]
    assert not {s.labels[0] for s in scenes.stamps if s.labels} & held_out
    items = [scenes[i] for i in range(len(scenes))]
    again = TuxpaintScenes("train", length=40, size=64, seed=3, root=fake_tuxpaint)[7]
    assert torch.equal(items[7][0], again[0]) and torch.equal(items[7][2], again[2])
    assert len({x.numpy().tobytes() for x, _, _ in items}) == len(items)  # distinct scenes
    for image, label, mask in items:
        assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.bool and mask.any()
        assert label == -1 or label not in held_out
    assert {label for _, label, _ in items} - {-1}, "some scenes' largest object is a labelled stamp"
    val = TuxpaintScenes("val", length=5, size=64, root=fake_tuxpaint)
    assert all(s.labels and s.labels[0] in held_out for s in val.stamps)
    with pytest.raises(ValueError, match="`objects`"):
        TuxpaintScenes("train", objects=(0, 2), root=fake_tuxpaint)
