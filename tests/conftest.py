
import numpy as np
import pytest
import timm
import torch
from torch import nn

IMAGE = 32
NUM_CLASSES = 5


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES
    ).eval()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=NUM_CLASSES, output_stride=8).eval()


class PlainCNN(nn.Module):
    """An image classifier that is not a timm model."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class WeightedPixels(nn.Module):
    """Logit 0 is ``sum_pixels weights * mean_channels(x)``, logit 1 is 0: what removing a set of
    pixels (to 0) does to it is known exactly."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, x):
        score = (x.mean(dim=1) * self.weights).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return PlainCNN().eval()


MODELS = {"vit": tiny_vit, "cnn": tiny_cnn, "plain": plain_cnn}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.fixture
def images():
    return torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def snapshot(model: nn.Module) -> dict:
    """Everything an attribution call must leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: tuple(len(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
            for n, m in model.named_modules()
        },
    }


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for k, g in before["grad"].items():
        assert (g is None) == (after["grad"][k] is None), k
        if g is not None:
            assert torch.equal(g, after["grad"][k]), k


@pytest.fixture
def fake_fashion(tmp_path):
    """IDX files of 60,010 training and 20 test "items" (filled squares), classes 0..9 in turn."""
    import gzip

    def write(name, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    for part, n in (("train", 60_010), ("t10k", 20)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 4:24, 4:24] = 255
        write(f"{part}-images-idx3-ubyte", images)
        write(f"{part}-labels-idx1-ubyte", np.arange(n) % 10)
    return str(tmp_path)
