"""Trains the explained models of the Fashion-MNIST scenes track: a timm ViT and a timm CNN.

Research scaffolding, outside the package: the shipped Fashion models (``captum_ltx/checkpoints/fashion-cnn``,
``fashion-vit``) were made with it. How, run by run, with every command and the runs not shipped (their
configs: ``benchmarks/fashion_training/unshipped/``), is in benchmarks/RESULTS.md, "How the shipped Fashion
models were trained".

Trains on one- and two-item training scenes (soft targets), keeps the epoch with the best validation
accuracy, and writes model.safetensors + config.json with the test accuracies: top-1 on one-item test
scenes and both classes in the top 2 on two-item test scenes. Each epoch is checkpointed under
``OUT.work``; the same command resumes. ``--evaluate checkpoints/fashion-cnn`` measures a saved model again.

    python benchmarks/fashion_training/train_fashion_models.py --arch cnn-2-blocks --epochs 40 --train-size 24000 --lr 2e-3 --out outputs/fashion-cnn
    python benchmarks/fashion_training/train_fashion_models.py --evaluate captum_ltx/checkpoints/fashion-cnn
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captum_ltx.datasets.fashion_scenes import CLASSES, FashionScenes
from captum_ltx.models import create_timm_model, load_timm_model, save_timm_model
from captum_ltx.pretrain import _load_optimizer, _save_optimizer  # the same resumable optimiser state

NORMALIZATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
def _variant(kind: tuple[str, dict], **changes) -> tuple[str, dict]:
    """An architecture of ARCHITECTURES with some creation arguments changed or added."""
    return kind[0], {**kind[1], **changes}


VIT_HYBRID_6_BLOCKS = ("vit_tiny_r_s16_p8_224", {"img_size": 64, "patch_size": 2, "embed_dim": 96, "depth": 6, "num_heads": 3})
CNN_2_BLOCKS = ("resnet18", {"layers": (2, 2, 2, 2), "channels": (32, 64, 96, 128), "output_stride": 8})
ARCHITECTURES = {
    # 8 x 8 patches of 64 px scenes: an 8 x 8 token grid, 4 blocks
    "vit": ("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}),
    # the same grid and blocks with one convolution (stride 4) before 2 x 2 patches: early convolutions
    # make small ViTs learn much faster (Xiao et al., 2021)
    "vit-hybrid": _variant(VIT_HYBRID_6_BLOCKS, depth=4),
    # the shipped checkpoints were still underfitting (training accuracy = validation accuracy): more blocks
    "vit-hybrid-6-blocks": VIT_HYBRID_6_BLOCKS,
    # the 6-block ViT still fits its training scenes no better than validation ones: two more blocks, which
    # --init appends to a 6-block model as identities (see _deepen)
    "vit-hybrid-8-blocks": _variant(VIT_HYBRID_6_BLOCKS, depth=8),
    # the 6-block ViT's weights (so --init vit-hybrid-6-blocks continues it) classifying the average of the
    # patch tokens instead of the class token: a two-item scene puts one item in each half of the grid, and
    # its both-in-the-top-2 accuracy trails the CNN's (which averages its last map) far more than its one-item one
    "vit-hybrid-6-blocks-avg": _variant(VIT_HYBRID_6_BLOCKS, global_pool="avg", fc_norm=False),
    # the 6-block ViT whose 4 x 4 patches read the stem's map before its max-pool (the same 8 x 8 token grid;
    # see ARCHITECTURE_EDITS): half of its two-item misses are items read as a similar class (a shirt as a
    # T-shirt), and the pool leaves a 30 px item about 8 x 8 stem pixels
    "vit-hybrid-6-blocks-stem2": _variant(VIT_HYBRID_6_BLOCKS),
    # a small ResNet at output stride 8: an 8 x 8 last feature map
    "cnn": _variant(CNN_2_BLOCKS, layers=(1, 1, 1, 1)),
    "cnn-2-blocks": CNN_2_BLOCKS,
    # the same weights (so --init cnn-2-blocks continues it) with stochastic depth: the CNN fits its training
    # scenes about 2 points better than validation ones, so regularise rather than grow it
    "cnn-2-blocks-drop-path": _variant(CNN_2_BLOCKS, drop_path_rate=0.1),
    # the same weights (so --init cnn-2-blocks continues it) with a stride-2 stem and the third stage
    # strided instead of dilated: the first two stages see twice the resolution, the last map is still
    # 8 x 8; about 1.8 times the compute
    "cnn-2-blocks-stem2": _variant(CNN_2_BLOCKS, output_stride=16),
}
# what timm's creation arguments cannot say (captum_ltx.models.MODEL_EDITS), recorded in config.json
ARCHITECTURE_EDITS = {"cnn-2-blocks-stem2": ["stem_without_pool"], "vit-hybrid-6-blocks-stem2": ["vit_stem_without_pool"]}


# each class's kind: a class that takes a missed item's place in the top 2 tells, by its kind, whether the
# model misread that item (a shirt as a T-shirt) or spent both places on the other item (a shirt and a T-shirt)
KINDS = ("top", "trouser", "top", "top", "top", "shoe", "top", "shoe", "bag", "shoe")
KIND_IDS = torch.tensor([sorted(set(KINDS)).index(k) for k in KINDS])


def _two_item_misses(logits: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For two-item scenes (``wanted``: (B, classes) bool, two per row) scored by ``logits``: the items
    lost from the top 2 (B, classes), and per scene whether it lost one item to a class of that item's
    kind only (misread) or of the kept item's kind only (hedged)."""
    in_top2 = torch.zeros_like(wanted).scatter_(1, logits.topk(2, dim=1).indices, True)
    lost = wanted & ~in_top2
    one_lost = lost.sum(dim=1) == 1
    lost_kind, kept_kind, intruder_kind = (KIND_IDS[m.float().argmax(dim=1)] for m in (lost, wanted & in_top2, in_top2 & ~wanted))
    misread = one_lost & (intruder_kind == lost_kind) & (intruder_kind != kept_kind)
    hedged = one_lost & (intruder_kind == kept_kind) & (intruder_kind != lost_kind)
    return lost, misread, hedged


def scores(model: torch.nn.Module, seed: int, n: int, split: str = "test", root: str | None = None) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The accuracies (top-1 on one-item scenes, both classes in the top 2 on two-item scenes), per
    class the share of its items in the two-item scenes that fall out of the top 2, and the shares of
    the missed two-item scenes that misread an item or hedged (see _two_item_misses), from one pass."""
    model.eval()
    one = FashionScenes(split, length=n, items=1, seed=seed + 1, root=root)
    two = FashionScenes(split, length=n, items=2, seed=seed + 2, root=root)
    top1_hits = both_hits = misread = hedged = 0
    missed, seen = torch.zeros(len(CLASSES)), torch.zeros(len(CLASSES))
    with torch.no_grad():
        for x, target, _ in DataLoader(one, batch_size=256):
            top1_hits += int((model(x).argmax(1) == target.argmax(1)).sum())
        for x, target, _ in DataLoader(two, batch_size=256):
            wanted = target > 0
            lost, misreads, hedges = _two_item_misses(model(x), wanted)
            both_hits += int((~lost.any(dim=1)).sum())
            seen += wanted.sum(0)
            missed += lost.sum(0)
            misread, hedged = misread + int(misreads.sum()), hedged + int(hedges.sum())
    accuracy = {"one_item_top1": top1_hits / n, "two_items_both_in_top2": both_hits / n}
    per_class = {name: round(float(m / s), 3) for name, m, s in zip(CLASSES, missed, seen.clamp_min(1))}
    scenes = max(n - both_hits, 1)
    return accuracy, per_class, {"misread": round(misread / scenes, 3), "hedged": round(hedged / scenes, 3)}


def accuracies(model: torch.nn.Module, seed: int, n: int, split: str = "test", root: str | None = None) -> dict[str, float]:
    return scores(model, seed, n, split, root)[0]


def _read_config(path: str, option: str) -> dict:
    """The config.json of a model folder this script wrote, named by the command-line ``option`` that gave it."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise SystemExit(f"{option} {path!r} must be a folder written by this script (config.json and model.safetensors)")
    with open(config_path) as f:
        return json.load(f)


# the last layers of a residual branch: zeroed, they make a block the identity (a ViT block, a ResNet basic block)
RESIDUAL_OUTPUTS = {"Block": ("attn.proj", "mlp.fc2"), "BasicBlock": ("bn2",)}


def _deepen(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` of a shallower model completed for ``model``: the blocks they lack start with their
    residual branches' last layers zeroed, so that the deeper model computes what the shallower one did
    and training carries on from it (Chen et al., 2016, Net2Net). Raises KeyError if the missing weights
    are not whole blocks of a kind in RESIDUAL_OUTPUTS."""
    own = model.state_dict()
    missing = own.keys() - weights.keys()
    new_blocks = {name for name, module in model.named_modules()
                  if type(module).__name__ in RESIDUAL_OUTPUTS and any(k.startswith(name + ".") for k in missing)}
    completed = dict(weights)
    for name in new_blocks:
        module = model.get_submodule(name)
        block_keys = {f"{name}.{k}" for k in module.state_dict()}
        if not block_keys <= missing:
            raise KeyError(f"{name} is only partly in the weights")
        zeroed = {f"{name}.{layer}." for layer in RESIDUAL_OUTPUTS[type(module).__name__]}
        for k in block_keys:
            fresh = own[k].clone()
            # weights and biases only: a normalisation's running variance stays 1
            if any(k.startswith(z) for z in zeroed) and k.rsplit(".", 1)[1] in ("weight", "bias"):
                fresh.zero_()
            completed[k] = fresh
    if completed.keys() != own.keys():
        raise KeyError(f"not in whole residual blocks: {sorted(own.keys() - completed.keys())[:3]}")
    return completed


PATCH_PROJECTION = "patch_embed.proj.weight"


def _unpool_patches(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` of a hybrid ViT completed for ``model``, the same ViT whose stem lost its max-pool
    (edit ``vit_stem_without_pool``): each weight of the patch projection is spread over the 2 x 2 block
    of stem pixels at its pooled input's place (the pool's stride), divided by 4, so each token starts
    from an average where the pool took the maximum over 3 x 3 windows (not the same function: training
    recovers the difference)."""
    own = model.state_dict()
    if PATCH_PROJECTION not in weights or PATCH_PROJECTION not in own:
        return weights
    kernel = weights[PATCH_PROJECTION]
    if own[PATCH_PROJECTION].shape != (*kernel.shape[:2], 2 * kernel.shape[2], 2 * kernel.shape[3]):
        return weights
    return {**weights, PATCH_PROJECTION: kernel.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 4}


def _read_init(path: str, model: torch.nn.Module, kind: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """The provenance and weights of the model that ``--init`` continues, checked against the model to
    train (``kind``: its architecture, kwargs and edits): the same weight names and shapes; another
    architecture is fine if its weights fit, as ``cnn-2-blocks`` into ``cnn-2-blocks-stem2``, if it
    only adds residual blocks, as ``vit-hybrid-6-blocks`` into ``vit-hybrid-8-blocks`` (see _deepen), or
    if its patches read the stem before its pool, as ``vit-hybrid-6-blocks`` into
    ``vit-hybrid-6-blocks-stem2`` (see _unpool_patches)."""
    config = _read_config(path, "--init")
    shallower = load_timm_model(path).eval()
    weights = _unpool_patches(model, shallower.state_dict())
    own = model.state_dict()
    misfit = SystemExit(f"--init {path!r} holds a {config.get('architecture')} with {config.get('kwargs')}, whose weights do not fit the --arch to train")
    if not weights.keys() <= own.keys() or any(weights[k].shape != own[k].shape for k in weights):
        raise misfit
    if weights.keys() != own.keys():
        try:
            weights = _deepen(model, weights)
        except KeyError:
            raise misfit from None
        deeper = copy.deepcopy(model).eval()
        deeper.load_state_dict(weights)
        probe = torch.randn(4, *kind["kwargs"]["pretrained_cfg_overlay"]["input_size"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            if not torch.allclose(deeper(probe), shallower(probe), atol=1e-4):
                raise SystemExit(f"--init {path!r}: the added blocks do not start as identities, so the deeper model would not continue it")
    # a model that was itself continued keeps its own provenance, so the chain of runs stays readable
    provenance = {k: config[k] for k in ("made_by", "test_accuracy", "validation_history", "initialised_from") if k in config}
    own_kind = {"architecture": config.get("architecture"), "kwargs": config.get("kwargs"), "edits": config.get("edits", [])}
    if own_kind != json.loads(json.dumps(kind)):  # JSON turns tuples into lists
        provenance["architecture"] = own_kind
    return provenance, weights


def _read_teacher(path: str) -> tuple[torch.nn.Module, dict]:
    """The frozen teacher of ``--teacher`` and its provenance; it must read scenes normalised as the student does."""
    config = _read_config(path, "--teacher")
    overlay = config.get("kwargs", {}).get("pretrained_cfg_overlay", {})
    if [overlay.get("mean"), overlay.get("std")] != [list(NORMALIZATION["mean"]), list(NORMALIZATION["std"])]:
        raise SystemExit(f"--teacher {path!r} must expect scenes normalised with {NORMALIZATION}, not {overlay}")
    # channels-last: the teacher's convolutions (a CNN's, or a hybrid ViT's stem) run faster so on CPU
    teacher = load_timm_model(path).to(memory_format=torch.channels_last)
    teacher.requires_grad_(False)
    provenance = {"path": path, "architecture": config.get("architecture"), **{k: config[k] for k in ("made_by", "test_accuracy") if k in config}}
    return teacher, provenance


def _distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # scaled by T^2 so that its gradients keep their size whatever the temperature (Hinton et al., 2015)
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    log_target=True, reduction="batchmean") * temperature ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=20_000, help="training scenes per epoch (new ones every epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: where `make fashion-assets` unpacks them)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="continue training a saved model of the same --arch: its weights with a new learning-rate cycle; "
                             "epochs and training scenes carry on after its own, and it stays the kept model unless an epoch beats it on validation")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="validate and keep an exponential moving average of the weights (decay per step, e.g. 0.999) "
                             "instead of the weights themselves: it smooths the last steps' noise")
    parser.add_argument("--teacher", metavar="CHECKPOINT",
                        help="distil from a saved model of this script (any --arch): the loss mixes the scenes' targets with the "
                             "teacher's softened predictions on the same scenes (Hinton et al., 2015)")
    parser.add_argument("--distill-weight", type=float, help="with --teacher: the teacher's share of the loss, in (0, 1] (default 0.5)")
    parser.add_argument("--distill-temperature", type=float, help="with --teacher: the softmax temperature of both models (default 2)")
    parser.add_argument("--hflip", action="store_true", help="mirror a random half of each training batch left-right")
    parser.add_argument("--evaluate", metavar="CHECKPOINT", help="only measure the accuracies of a saved model")
    parser.add_argument("--evaluate-split", default="test", choices=("train", "val", "test"),
                        help="scenes --evaluate uses: training scenes against validation ones tell underfitting from overfitting")
    parser.add_argument("--misses", action="store_true",
                        help="with --evaluate: also each class's share of two-item items missing from the top 2, and how "
                             "many missed scenes misread an item or hedged on the other (see _two_item_misses)")
    args = parser.parse_args()
    if args.evaluate:
        accuracy, misses, intruders = scores(load_timm_model(args.evaluate), args.seed, args.eval_size, split=args.evaluate_split, root=args.data_root)
        print(accuracy)
        if args.misses:
            print("missed in two-item scenes:", misses)
            print("of the missed two-item scenes, the item misread or the other item hedged:", intruders)
        return
    if not (args.arch and args.out):
        parser.error("--arch and --out are required to train (or give --evaluate CHECKPOINT)")
    if args.teacher is None and (args.distill_weight is not None or args.distill_temperature is not None):
        parser.error("--distill-weight and --distill-temperature need --teacher")
    if args.teacher is not None:
        args.distill_weight = 0.5 if args.distill_weight is None else args.distill_weight
        args.distill_temperature = 2.0 if args.distill_temperature is None else args.distill_temperature
        if not 0 < args.distill_weight <= 1:
            parser.error(f"--distill-weight must be in (0, 1], got {args.distill_weight}")
        if not args.distill_temperature > 0:
            parser.error(f"--distill-temperature must be positive, got {args.distill_temperature}")

    from timm.utils import ModelEmaV3

    torch.manual_seed(args.seed)
    name, kwargs = ARCHITECTURES[args.arch]
    kwargs = {**kwargs, "num_classes": 10, "pretrained_cfg_overlay": {**NORMALIZATION, "input_size": (3, 64, 64)}}
    edits = ARCHITECTURE_EDITS.get(args.arch, [])
    described = {"edits": edits} if edits else {}  # passed to every save_timm_model so load_timm_model rebuilds it
    model = create_timm_model(name, kwargs, edits)
    # channels-last convolutions train a quarter faster on CPU; saved weights are made contiguous again
    memory_format = torch.channels_last if args.arch.startswith("cnn") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * (args.train_size // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    work = args.out + ".work"
    state_path = os.path.join(work, "state.json")
    kind = {"architecture": name, "kwargs": kwargs, "edits": edits}
    initialised_from, init_weights = _read_init(args.init, model, kind) if args.init else ({}, None)
    teacher, distilled_from = _read_teacher(args.teacher) if args.teacher else (None, {})
    # a continued model's epochs, and the seeds of their training scenes, carry on after its own
    history = initialised_from.pop("validation_history", [])
    offset = start = len(history)
    best = -1.0
    if os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        start, best, history = state["epoch"], state["best"], state.get("history", [])
        model.load_state_dict(load_timm_model(os.path.join(work, "last")).state_dict())
        _load_optimizer(optimizer, os.path.join(work, "optimizer.safetensors"), state["param_groups"])
        schedule.load_state_dict(state["schedule"])
        print(f"resuming after epoch {start}")
    elif args.init:
        model.load_state_dict(init_weights)
        val = accuracies(model, args.seed, args.eval_size // 2, split="val", root=args.data_root)
        best = val["one_item_top1"] + val["two_items_both_in_top2"]
        print(f"{args.init}: validation {val}")
        save_timm_model(model, os.path.join(work, "best"), name, kwargs, **described)
    # created once the weights to train are in place, so the average starts from them
    ema = ModelEmaV3(model, decay=args.ema) if args.ema else None
    if ema is not None and os.path.isdir(os.path.join(work, "ema")):
        ema.module.load_state_dict(load_timm_model(os.path.join(work, "ema")).state_dict())
    for epoch in range(start, offset + args.epochs):
        model.train()
        data = FashionScenes("train", length=args.train_size, items="mixed", seed=args.seed + 100 * (epoch + 1), root=args.data_root)
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, drop_last=True)
        bar = tqdm(loader, desc=f"{args.arch} epoch {epoch + 1}/{offset + args.epochs}")
        # seeded by the epoch, so a resumed run mirrors the same scenes
        flips = torch.Generator().manual_seed(args.seed + epoch)
        for x, target, _ in bar:
            if args.hflip:
                x = torch.where(torch.rand(len(x), 1, 1, 1, generator=flips) < 0.5, x.flip(3), x)
            x = x.to(memory_format=memory_format)
            logits = model(x)
            loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
            if teacher is not None:
                taught = _distillation_loss(logits, teacher(x.contiguous(memory_format=torch.channels_last)), args.distill_temperature)
                loss = (1 - args.distill_weight) * loss + args.distill_weight * taught
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update(model)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        candidate = model if ema is None else ema.module
        val = accuracies(candidate, args.seed, args.eval_size // 2, split="val", root=args.data_root)
        score = val["one_item_top1"] + val["two_items_both_in_top2"]
        history.append({"epoch": epoch + 1, **val})
        print(f"epoch {epoch + 1}: validation {val}")
        if score > best:
            best = score
            save_timm_model(candidate, os.path.join(work, "best"), name, kwargs, **described)
        save_timm_model(model, os.path.join(work, "last"), name, kwargs, **described)
        if ema is not None:
            save_timm_model(ema.module, os.path.join(work, "ema"), name, kwargs, **described)
        groups = _save_optimizer(optimizer, os.path.join(work, "optimizer.safetensors"))
        with open(state_path, "w") as f:
            json.dump({"epoch": epoch + 1, "best": best, "history": history, "param_groups": groups, "schedule": schedule.state_dict()}, f)
    model = load_timm_model(os.path.join(work, "best"))
    test = accuracies(model, args.seed, args.eval_size, root=args.data_root)
    recorded = {k: v for k, v in vars(args).items() if v is not None and v is not False and not k.startswith("evaluate") and k not in ("data_root", "misses")}
    command = "python benchmarks/fashion_training/train_fashion_models.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in recorded.items())
    provenance = {"initialised_from": initialised_from} if initialised_from else {}
    if distilled_from:
        provenance["distilled_from"] = distilled_from
    save_timm_model(model, args.out, name, kwargs, test_accuracy=test, test_scenes_per_kind=args.eval_size,
                    validation_history=history, made_by=command, **described, **provenance)
    print(f"test: {test}; wrote {args.out}")


if __name__ == "__main__":
    main()
