"""A non-editable install carries the shipped explainers and models, and finds them by name."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_LIMIT_MB = 40

CHECK = """
import os, sys, torch
import captum_ltx
from captum_ltx import LTX, Explainer, available_explainers
from captum_ltx.models import create_model

assert captum_ltx.__file__.startswith(sys.prefix), captum_ltx.__file__  # the installed copy, not the repository
assert available_explainers() == ["efficientnet_lite0", "fashion_cnn", "fashion_vit"], available_explainers()
for name in ["fashion_cnn", "fashion_vit"]:
    model = create_model(name)
    attr = LTX(model, name, finetune_steps=1).attribute(torch.rand(1, 3, 64, 64), target=0)
    assert attr.shape == (1, 3, 64, 64)
model = create_model("efficientnet_lite0")
explainer = Explainer.from_pretrained("efficientnet_lite0", model)
assert explainer.config["finetuning"]["finetune_steps"] == 12
print("ok")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout")
def test_built_wheel_installs_every_shipped_checkpoint_by_name(tmp_path):
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # built from a copy of the package's sources: setuptools leaves build/ and *.egg-info where it builds
    for part in ("captum_ltx", "setup.cfg", "pyproject.toml", "README.md"):
        copy = shutil.copytree if os.path.isdir(os.path.join(REPOSITORY, part)) else shutil.copy
        copy(os.path.join(REPOSITORY, part), source / part, **({"ignore": shutil.ignore_patterns("__pycache__", "*.work")} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True)
    (wheel,) = wheels.iterdir()
    assert wheel.stat().st_size < SHIPPED_LIMIT_MB * 2**20
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # torch, timm and the Lite0 weights' wheel from this environment; captum_ltx only from the wheel (a
    # path line in a .pth file adds a folder without running the editable install's hook in it)
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)], check=True, capture_output=True)
    result = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
