"""IIA3 on a torchvision ResNet-50: seconds per image of captum-ltx's IIA against the authors' algorithm, in one run.

    python benchmarks/iia3_speed.py --out benchmarks/results/issue21-iia3-speed.md

The authors' released code (notes: ../shared/reference/iia_dix.md, section 1.3) splits the ResNet
by hand: the front up to ``layer3`` runs on the 11 input-path images, ``layer4`` on the 121
layer-3 path points, and only the head (ReLU, average pool, fc) on the 1,331 layer-4 points it
differentiates. ``authors_iia3`` below restates that computation for a torchvision ResNet (written
from the notes, not copied); captum-ltx's ``IIA(model, variant=3)`` finds the stages itself and runs
each integration point through the part of the network after its stage. Both get the same images
(random, 224 px; the weights are torchvision's initialisation: nothing is downloaded) and chunk
sizes; captum-ltx is timed through its public ``attribute`` (upsampling and normalisation included).
The two maps of the first image are compared (Pearson correlation of the 7x7 maps before upsampling)
so that the timing compares the same computation.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_ltx import IIA

from _output import emit  # benchmarks/_output.py: a script's own folder is on sys.path


def authors_iia3(model: nn.Module, x: Tensor, target: int, n_steps: int = 10, chunk: int = 64) -> Tensor:
    """The released CNN IIA3 on one image (1, 3, H, W), zero baseline: the (h, w) map before upsampling."""
    front = nn.Sequential(*list(model.children())[:7])  # conv1 ... layer3
    a = torch.linspace(0, 1, n_steps + 1, dtype=x.dtype)
    with torch.no_grad():
        u3 = front(a.view(-1, 1, 1, 1) * x)
        r3 = u3.amin(dim=0)
        w = (r3 + a.view(-1, 1, 1, 1, 1) * (u3 - r3)).flatten(0, 1)  # (j, k) points
        u4 = torch.cat([model.layer4(w[i : i + chunk]) for i in range(0, len(w), chunk)])
    u4 = u4.view(n_steps + 1, n_steps + 1, *u4.shape[1:])
    total = torch.zeros_like(u4[0, 0])
    for j in range(n_steps + 1):
        r4 = u4[j].amin(dim=0)
        z = (r4 + a.view(-1, 1, 1, 1, 1) * (u4[j] - r4)).flatten(0, 1)
        for i in range(0, len(z), chunk):
            point = z[i : i + chunk].detach().requires_grad_(True)
            logits = model.fc(torch.flatten(model.avgpool(F.relu(point)), 1))
            (g,) = torch.autograd.grad(logits[:, target].sum(), point)
            total += (g * point.clamp_min(0)).clamp_min(0).sum(dim=0)
    return total.sum(dim=0)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="images")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/iia3_speed.py"] + sys.argv[1:])
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    images = torch.randn(args.n, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(images).argmax(dim=1).tolist()
    ours = IIA(model, variant=3, internal_batch_size=64, normalize=False)
    ours.attribute(images[:1], target=targets[0])  # untimed: stage discovery and tracing, once per model
    start = time.perf_counter()
    for x, t in zip(images, targets):
        ours.attribute(x[None], target=t)
    ours_seconds = (time.perf_counter() - start) / args.n
    start = time.perf_counter()
    theirs_maps = [authors_iia3(model, x[None], t) for x, t in zip(images, targets)]
    theirs_seconds = (time.perf_counter() - start) / args.n
    # the same computation: our map before upsampling, on the first image, against theirs
    first = ours._maps(images[:1], torch.tensor(targets[:1]), torch.zeros_like(images[:1]), ())[0, 0]
    correlation = float(torch.corrcoef(torch.stack([first.flatten(), theirs_maps[0].flatten()]))[0, 1])
    text = "\n".join([
        f"# IIA3 on torchvision ResNet-50 ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})", "",
        f"Made by `{command}`. {args.n} random 224-px images, the model's predicted classes, 10 steps per integral, chunks of 64.", "",
        "| implementation | seconds per image | ratio to the authors' |", "|---|---|---|",
        f"| authors' algorithm (front / layer4 / head split by hand) | {theirs_seconds:.2f} | 1.00 |",
        f"| captum-ltx `IIA(model, variant=3)` | {ours_seconds:.2f} | {ours_seconds / theirs_seconds:.2f} |", "",
        f"Pearson correlation of the two 7x7 maps (before upsampling) on the first image: {correlation:.6f}.", "",
    ])
    emit(text, args.out)


if __name__ == "__main__":
    main()
