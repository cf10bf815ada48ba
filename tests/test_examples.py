"""The examples' own logic; running them end to end is `make demo` (minutes, not a unit test)."""

import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_says_where_ltx_wins_and_where_it_does_not():
    demo = _load("demo")
    table = {
        "LTX": {"deletion": 0.05, "insertion": 0.60, "seconds": 1.0},
        "GradCAM": {"deletion": 0.03, "insertion": 0.50, "seconds": 0.1},
        "IG": {"deletion": 0.09, "insertion": 0.40, "seconds": 3.0},
    }
    wins = {"LTX": {"deletion": 1, "insertion": 3}, "GradCAM": {"deletion": 2, "insertion": 0}, "IG": {"deletion": 0, "insertion": 0}}
    deletion, insertion, cost = demo.verdict(table, wins, photos=3)
    assert deletion.startswith("deletion: LTX ranks 2 of 3 (0.050; best GradCAM 0.030)") and deletion.endswith("best method on 1 of 3 photos")
    assert insertion.startswith("insertion: LTX ranks 1 of 3 (0.600; best LTX 0.600)") and insertion.endswith("on 3 of 3 photos")
    assert cost == "cost: LTX takes 1.00 s per photo; faster: GradCAM; slower: IG"


def test_demo_and_tutorial_name_only_registered_methods_and_shipped_explainers():
    from captum_ltx import available_explainers, methods

    demo = _load("demo")
    assert {name for name, _ in demo.METHODS.values()} <= set(methods.available("cnn"))
    assert {o["explainer"] for _, o in demo.METHODS.values() if "explainer" in o} <= set(available_explainers())
    _load("tutorial")  # imports cleanly
