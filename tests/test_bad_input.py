import pytest
import torch

from captum_ltx import LTX
from conftest import IMAGE, tiny_cnn


@pytest.fixture(scope="module")
def ltx():
    return LTX(tiny_cnn(), finetune_steps=1)


def x(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"inputs": x(3, IMAGE, IMAGE)}, ValueError, "`inputs` must have shape"),
        ({"inputs": x(1, 1, 3, IMAGE, IMAGE)}, ValueError, "`inputs` must have shape"),
        ({"inputs": x(1, 4, IMAGE, IMAGE)}, ValueError, "channels"),
        ({"inputs": x(0, 3, IMAGE, IMAGE)}, ValueError, "empty batch"),
        ({"inputs": x(1, 3, IMAGE, IMAGE, dtype=torch.uint8)}, TypeError, "floating-point"),
        ({"inputs": x(1, 3, IMAGE, IMAGE).fill_(float("nan"))}, ValueError, "NaN or Inf"),
        ({"inputs": x(1, 3, IMAGE, IMAGE).fill_(float("inf"))}, ValueError, "NaN or Inf"),
        ({"inputs": [[1.0]]}, TypeError, "`inputs`"),
        ({"inputs": (x(1, 3, IMAGE, IMAGE), x(1, 3, IMAGE, IMAGE))}, ValueError, "additional_forward_args"),
        ({"target": 5}, ValueError, r"`target` values must lie in \[0, 5\)"),
        ({"target": -1}, ValueError, "`target` values"),
        ({"target": [0, 1, 2]}, ValueError, "`target` has 3 entries but the batch has 2"),
        ({"target": torch.tensor([0.5, 1.0])}, TypeError, "integer tensor"),
        ({"target": (0, 1)}, TypeError, "tuple targets"),
        ({"target": "cat"}, TypeError, "`target`"),
        ({"baselines": torch.zeros(2, 3, 5, 5)}, ValueError, "`baselines`"),
        ({"baselines": "black"}, TypeError, "`baselines`"),
        ({"finetune_steps": -1}, ValueError, "`finetune_steps`"),
    ],
)
def test_bad_call_arguments(ltx, kwargs, error, words):
    call = {"inputs": x(2, 3, IMAGE, IMAGE), "target": 0}
    call.update(kwargs)
    with pytest.raises(error, match=words):
        ltx.attribute(call.pop("inputs"), **call)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"selection": "best"}, "`selection` must be one of"),
        ({"finetune": "layers"}, "`finetune` must be one of"),
        ({"finetune_steps": 2.5}, "`finetune_steps`"),
        ({"lr": -1.0}, "`lr`"),
        ({"mask_weight": float("nan")}, "`mask_weight`"),
        ({"normalization": (0.5, 0.5)}, "`normalization`"),
    ],
)
def test_bad_constructor_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LTX(tiny_cnn(), **kwargs)


def test_bad_explainer_argument():
    with pytest.raises(TypeError, match="`explainer`"):
        LTX(tiny_cnn(), explainer=42)


def test_model_without_logits_output():
    with pytest.raises(ValueError, match="logits of shape"):
        LTX(torch.nn.Conv2d(3, 3, 1)).attribute(x(1, 3, IMAGE, IMAGE))
