"""Chooses the LTX explainer's settings for a model on the validation split, and records every try.

    python benchmarks/tuning/tune_explainer.py --model efficientnet_lite0 --out benchmarks/results/lite0-tuning.md

Each setting pretrains an explainer (``captum-ltx pretrain``) on training composites, then scores
pLTX and finetuned LTX on validation composites (``captum-ltx benchmark --split val``); the test split
and the photos are never touched. Work goes to ``--work`` and resumes when the command is run again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex

import numpy as np

from captum_ltx.benchmark.report import load_results
from captum_ltx.cli import main as cli

# name -> (pretraining arguments, LTX options at explanation time); tried in this order, each chosen
# from what the ones before it gave on the validation split
SETTINGS: dict[str, tuple[list[str], dict]] = {
    # finetuning at LTX's default lr for a checkpoint without recorded settings (2e-3)
    "mw3": (["--mask-weight", "3", "--lr", "2e-3"], {}),
    "mw1": (["--mask-weight", "1", "--lr", "2e-3"], {"mask_weight": 1.0}),
    "mw10": (["--mask-weight", "10", "--lr", "2e-3"], {"mask_weight": 10.0}),
    "mw3-stride16": (["--mask-weight", "3", "--lr", "2e-3", "--explainer-options", '{"feature_layer": "blocks.4"}'], {}),
    # the explainers above collapse to one mask for every image: lr 2e-3 wrecks the copied backbone.
    # The reference's effective pretraining lr never passes 2e-4 (its warm-up quirk), and its
    # finetuning lr is far lower still.
    "mw10-lr2e-4": (["--mask-weight", "10", "--lr", "2e-4"], {"mask_weight": 10.0, "lr": 1e-4}),
    # longer pretraining (later arguments override --train-size / --epochs)
    "mw10-lr2e-4-long": (["--mask-weight", "10", "--lr", "2e-4", "--train-size", "1600", "--epochs", "3"], {"mask_weight": 10.0, "lr": 1e-4}),
    # for the Fashion models (64 px: pretraining is cheap, so longer from the start)
    "fashion-mw10": (["--mask-weight", "10", "--lr", "2e-4"], {"mask_weight": 10.0, "lr": 3e-5}),
    "fashion-mw3": (["--mask-weight", "3", "--lr", "2e-4"], {"mask_weight": 3.0, "lr": 3e-5}),
    "fashion-mw10-lr1e-3": (["--mask-weight", "10", "--lr", "1e-3"], {"mask_weight": 10.0, "lr": 1e-4}),
    # Fashion: the pretrained explainer gives one mask per scene whichever class is asked for (class
    # sensitivity 0.95 on fashion-two); finetuning harder is the lever that can make it class-specific
    "fashion-mw10-ft3e-4": (["(as fashion-mw10)"], {"mask_weight": 10.0, "lr": 3e-4}),
    "fashion-mw10-ft1e-3": (["(as fashion-mw10)"], {"mask_weight": 10.0, "lr": 1e-3}),
    # ... or an explainer that reads the class (Explainer num_classes), pretrained on classes drawn
    # from the model's softmax so that it also learns the second item of a two-item scene
    "fashion-cc-mw10": (["--mask-weight", "10", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}'],
                        {"mask_weight": 10.0, "lr": 3e-5}),
    "fashion-cc-mw3": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}'],
                       {"mask_weight": 3.0, "lr": 3e-5}),
    # both fixes together
    "fashion-cc-mw10-ft3e-4": (["(as fashion-cc-mw10)"], {"mask_weight": 10.0, "lr": 3e-4}),
    "fashion-cc-mw10-ft1e-3": (["(as fashion-cc-mw10)"], {"mask_weight": 10.0, "lr": 1e-3}),
    "fashion-cc-mw3-ft3e-4": (["(as fashion-cc-mw3)"], {"mask_weight": 3.0, "lr": 3e-4}),
    # twice the reference's 25 finetuning steps
    "fashion-cc-mw3-ft3e-4-50steps": (["(as fashion-cc-mw3)"], {"mask_weight": 3.0, "lr": 3e-4, "finetune_steps": 50}),
    "fashion-cc-mw10-ft3e-4-50steps": (["(as fashion-cc-mw10)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50}),
    # three times longer pretraining of the class-conditioned explainers
    "fashion-cc-mw3-long": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}',
                             "--train-size", "12000"], {"mask_weight": 3.0, "lr": 3e-4, "finetune_steps": 50}),
    "fashion-cc-mw10-long": (["--mask-weight", "10", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}',
                              "--train-size", "12000"], {"mask_weight": 10.0, "lr": 3e-4}),
    # finetuning with the reference's first-version objective: the complement 1 - m must also lose the
    # class, which asks the mask to hold all of the evidence that removal metrics (POS, deletion) take away
    "fashion-cc-mw3-ft3e-4-50steps-cf": (["(as fashion-cc-mw3)"], {"mask_weight": 3.0, "lr": 3e-4, "finetune_steps": 50, "counterfactual": True}),
    "fashion-cc-mw10-ft3e-4-50steps-cf": (["(as fashion-cc-mw10)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50, "counterfactual": True}),
    # the same finetuning, explained by the average of the masks along its path: the pixels kept from
    # the first steps on come first, where the last masks cover the whole item evenly
    "fashion-cc-mw3-ft3e-4-50steps-mean": (["(as fashion-cc-mw3)"], {"mask_weight": 3.0, "lr": 3e-4, "finetune_steps": 50, "selection": "mean"}),
    "fashion-cc-mw10-ft3e-4-50steps-mean": (["(as fashion-cc-mw10)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50, "selection": "mean"}),
    # the same finetuning with a heavier mask penalty than pretraining's: smaller masks keep only the
    # pixels the class needs most, which is what POS, deletion and the pointing game reward
    "fashion-cc-mw3-ft3e-4-50steps-fmw6": (["(as fashion-cc-mw3)"], {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50}),
    "fashion-cc-mw3-ft3e-4-50steps-fmw10": (["(as fashion-cc-mw3)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50}),
    # finetuning settings on the long explainer (no new pretraining)
    "long-ft-lr3e-5": (["(as mw10-lr2e-4-long)"], {"mask_weight": 10.0, "lr": 3e-5}),
    "long-ft-lr3e-4": (["(as mw10-lr2e-4-long)"], {"mask_weight": 10.0, "lr": 3e-4}),
    "long-ft-50steps": (["(as mw10-lr2e-4-long)"], {"mask_weight": 10.0, "lr": 1e-4, "finetune_steps": 50}),
    # issue 19, pretraining-time changes, each alone at one short pretraining budget (the script's
    # --train-size/--epochs), against the reference's raw-feature head made with the same budget:
    # the normalised head with the prior-bias start (now the default), a multi-stride head on it, and
    # a black/blur baseline mixture in pretraining and finetuning on it
    "i19-raw": (["--mask-weight", "10", "--lr", "2e-4", "--explainer-options", '{"feature_norm": null, "mask_prior": null}'],
                {"mask_weight": 10.0, "lr": 3e-5}),
    "i19-norm": (["--mask-weight", "10", "--lr", "2e-4"], {"mask_weight": 10.0, "lr": 3e-5}),
    "i19-norm-ms": (["--mask-weight", "10", "--lr", "2e-4", "--explainer-options", '{"multi_stride": true}'],
                    {"mask_weight": 10.0, "lr": 3e-5}),
    "i19-norm-mix": (["--mask-weight", "10", "--lr", "2e-4", "--objective", '{"baseline": "mix"}'],
                     {"mask_weight": 10.0, "lr": 3e-5, "objective": {"baseline": "mix"}}),
    # the same for the Fashion models, with their shipped explainers' pretraining and finetuning
    # (class-conditioned, mask weight 3, finetuning 50 steps at 3e-4 with mask weight 6)
    "i19-fashion-raw": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled",
                         "--explainer-options", '{"num_classes": 10, "feature_norm": null, "mask_prior": null}'],
                        {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50}),
    "i19-fashion-norm": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}'],
                         {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50}),
    "i19-fashion-norm-ms": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled",
                             "--explainer-options", '{"num_classes": 10, "multi_stride": true}'],
                            {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50}),
    "i19-fashion-norm-mix": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}',
                              "--objective", '{"baseline": "mix"}'],
                             {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50, "objective": {"baseline": "mix"}}),
    # issue 19, second round: the best of the first together (pretraining with the mix on a
    # normalised head, alone and with the multi-stride head; finetuning with the mix and total
    # variation), and the best at the shipped Lite0 explainer's pretraining length
    "i19-norm-mix-tv": (["(as i19-norm-mix)"], {"mask_weight": 10.0, "lr": 3e-5, "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-norm-ms-mix-tv": (["--mask-weight", "10", "--lr", "2e-4", "--explainer-options", '{"multi_stride": true}', "--objective", '{"baseline": "mix"}'],
                           {"mask_weight": 10.0, "lr": 3e-5, "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-norm-mix-tv-long": (["--mask-weight", "10", "--lr", "2e-4", "--objective", '{"baseline": "mix"}', "--train-size", "1600", "--epochs", "3"],
                             {"mask_weight": 10.0, "lr": 3e-5, "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-fashion-raw-mix-tv": (["(as i19-fashion-raw)"], {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50,
                                                          "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-fashion-norm-mix-tv": (["(as i19-fashion-norm-mix)"], {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50,
                                                                "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-fashion-norm-ms-mix-tv": (["--mask-weight", "3", "--lr", "2e-4", "--target", "sampled",
                                    "--explainer-options", '{"num_classes": 10, "multi_stride": true}', "--objective", '{"baseline": "mix"}'],
                                   {"mask_weight": 6.0, "lr": 3e-4, "finetune_steps": 50, "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    # the Fashion ViT's own: its shipped explainer pretrains at mask weight 10 and finetunes at 10
    "i19-vit-raw": (["--mask-weight", "10", "--lr", "2e-4", "--target", "sampled",
                     "--explainer-options", '{"num_classes": 10, "feature_norm": null, "mask_prior": null}'],
                    {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50}),
    "i19-vit-norm": (["--mask-weight", "10", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}'],
                     {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50}),
    "i19-vit-norm-mix": (["--mask-weight", "10", "--lr", "2e-4", "--target", "sampled", "--explainer-options", '{"num_classes": 10}',
                          "--objective", '{"baseline": "mix"}'],
                         {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50, "objective": {"baseline": "mix"}}),
    "i19-vit-raw-mix-tv": (["(as i19-vit-raw)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50,
                                                  "objective": {"baseline": "mix", "tv_weight": 0.5}}),
    "i19-vit-norm-mix-tv": (["(as i19-vit-norm-mix)"], {"mask_weight": 10.0, "lr": 3e-4, "finetune_steps": 50,
                                                        "objective": {"baseline": "mix", "tv_weight": 0.5}}),
}
REUSE = {
    "i19-vit-raw-mix-tv": "i19-vit-raw", "i19-vit-norm-mix-tv": "i19-vit-norm-mix",
    "i19-norm-mix-tv": "i19-norm-mix", "i19-fashion-raw-mix-tv": "i19-fashion-raw", "i19-fashion-norm-mix-tv": "i19-fashion-norm-mix",
    "long-ft-lr3e-5": "mw10-lr2e-4-long", "long-ft-lr3e-4": "mw10-lr2e-4-long", "long-ft-50steps": "mw10-lr2e-4-long",
    "fashion-mw10-ft3e-4": "fashion-mw10", "fashion-mw10-ft1e-3": "fashion-mw10",
    "fashion-cc-mw10-ft3e-4": "fashion-cc-mw10", "fashion-cc-mw10-ft1e-3": "fashion-cc-mw10",
    "fashion-cc-mw3-ft3e-4": "fashion-cc-mw3", "fashion-cc-mw3-ft3e-4-50steps": "fashion-cc-mw3",
    "fashion-cc-mw10-ft3e-4-50steps": "fashion-cc-mw10",
    "fashion-cc-mw3-ft3e-4-50steps-cf": "fashion-cc-mw3", "fashion-cc-mw10-ft3e-4-50steps-cf": "fashion-cc-mw10",
    "fashion-cc-mw3-ft3e-4-50steps-mean": "fashion-cc-mw3", "fashion-cc-mw10-ft3e-4-50steps-mean": "fashion-cc-mw10",
    "fashion-cc-mw3-ft3e-4-50steps-fmw6": "fashion-cc-mw3", "fashion-cc-mw3-ft3e-4-50steps-fmw10": "fashion-cc-mw3",
}
REPORTED = ("del_auc", "ins_auc", "pos_auc", "neg_auc", "mass_inside", "miou", "pointing_game")
LOWER_IS_BETTER = ("del_auc", "pos_auc")


@functools.lru_cache(maxsize=1)
def _validation(model_name: str, n: int, track: str) -> tuple:
    # one model and one set of validation samples for every setting
    from captum_ltx.benchmark import create_track
    from captum_ltx.models import create_model

    model = create_model(model_name)
    return model, create_track(track, model, n=n, split="val")


@functools.lru_cache(maxsize=None)  # settings that reuse an explainer share its spread
def mask_spread(model_name: str, checkpoint: str, n: int, track: str) -> float:
    import torch

    from captum_ltx import LTX

    model, samples = _validation(model_name, n, track)
    pltx = LTX(model, checkpoint, finetune_steps=0)
    masks = torch.cat([pltx.attribute(s.image[None], target=s.target)[:, 0] for s in samples])
    return float(masks.std(dim=0).mean())


def mean_ranks(rows: list[dict[str, float]]) -> list[float]:
    """Each row's rank (1 = best) averaged over REPORTED; del_auc and pos_auc are better low."""
    if not rows:
        return []
    table = np.array([[r[k] if k in LOWER_IS_BETTER else -r[k] for k in REPORTED] for r in rows])
    # tied rows share the better rank instead of being ordered by their place in the table
    ranks = (table[None, :, :] < table[:, None, :]).sum(axis=1) + 1
    return ranks.mean(axis=1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    parser.add_argument("--data", default="tuxpaint", help="pretraining data (captum_ltx.datasets)")
    parser.add_argument("--val-track", default="imagenet-masks", help="track whose val split scores each setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--val-images", type=int, default=12)
    parser.add_argument("--work", default="outputs/tuning")
    parser.add_argument("--out", required=True, help="Markdown table of every try")
    args = parser.parse_args()

    rows = []
    for name in args.settings.split(","):
        pretrain_args, ltx_options = SETTINGS[name]
        folder = os.path.join(args.work, args.model, name)
        # a setting that differs only at explanation time reuses the explainer of the one it names
        checkpoint = os.path.join(args.work, args.model, REUSE.get(name, name), "explainer")
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            cli(["pretrain", "--model", args.model, "--data", args.data, "--batch-size", str(args.batch_size),
                 "--train-size", str(args.train_size), "--epochs", str(args.epochs),
                 "--val-size", "32", "--out", checkpoint, "--checkpoint-dir", os.path.join(folder, "work")] + pretrain_args)
        options = {m: {"explainer": checkpoint, **ltx_options} for m in ("ltx", "pltx")}
        for finetuning_only in ("mask_weight", "lr", "finetune_steps", "counterfactual", "selection", "objective", "backbone_lr"):
            options["pltx"].pop(finetuning_only, None)
        cli(["benchmark", "--model", args.model, "--track", args.val_track, "--split", "val", "--n", str(args.val_images),
             "--methods", "ltx,pltx", "--no-sanity", "--options", json.dumps(options), "--out", os.path.join(folder, "val")])
        records = load_results(os.path.join(folder, "val"))
        spread = mask_spread(args.model, checkpoint, args.val_images, args.val_track)
        # pLTX depends only on the explainer: one row, under the setting that pretrains it
        for method in ("ltx",) if name in REUSE else ("pltx", "ltx"):
            values = {k: np.mean([r["metrics"][k] for r in records if r["method"] == method]) for k in REPORTED}
            values["spread"] = spread
            finetuning = json.dumps(ltx_options) if method == "ltx" else "(no finetuning)"
            rows.append((name, " ".join(shlex.quote(a) for a in pretrain_args), f"{method} {finetuning}", values))
    for values, rank in zip((v for *_, v in rows), mean_ranks([v for *_, v in rows])):
        values["rank"] = rank
    # the bar to clear, on the same validation composites
    baselines = os.path.join(args.work, args.model, "baselines-val")
    cli(["benchmark", "--model", args.model, "--track", args.val_track, "--split", "val", "--n", str(args.val_images),
         "--methods", "gradcam,dix,random", "--no-sanity", "--out", baselines])
    records = load_results(baselines)
    for method in ("gradcam", "dix", "random"):
        values = {k: np.mean([r["metrics"][k] for r in records if r["method"] == method]) for k in REPORTED}
        rows.append(("baseline", "", method, {**values, "spread": float("nan"), "rank": float("nan")}))
    lines = [
        f"# LTX explainer settings for {args.model}, chosen on the validation split",
        "",
        f"Made by: `python benchmarks/tuning/tune_explainer.py --model {args.model} --data {args.data} --val-track {args.val_track} "
        f"--settings {args.settings} --batch-size {args.batch_size} --train-size {args.train_size} --epochs {args.epochs} "
        f"--val-images {args.val_images} --out {args.out}`",
        "",
        f"Each setting: pretraining on {args.train_size} {args.data} training images x {args.epochs} epoch(s) (unless its "
        f"arguments say otherwise), then means over the first {args.val_images} samples of the validation split of "
        f"{args.val_track} (never the test split).",
        "",
        "| setting | pretraining arguments | method (finetuning options) | " + " | ".join(REPORTED) + " | pLTX spread | mean rank |",
        "|---" * (len(REPORTED) + 5) + "|",
    ]
    for name, pretrain_args, method, values in rows:
        lines.append(f"| {name} | `{pretrain_args}` | {method} | " + " | ".join(f"{values[k]:.3f}" if k in ("mass_inside", "miou", "pointing_game") else f"{values[k]:.1f}" for k in REPORTED) + f" | {values['spread']:.3f} | {values['rank']:.1f} |")
    lines += ["", "del_auc, pos_auc: lower is better; the others: higher is better. pLTX spread: standard deviation "
              "across the validation images of the pretrained explainer's mask, averaged over pixels; near 0 means "
              "the explainer has collapsed to one mask for every image. Mean rank: over the seven metrics, among the "
              "LTX and pLTX rows (1 = best; tied rows share the better rank); the setting is chosen by it. A setting "
              "that reuses another's explainer has no pLTX row of its own."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
