import json

import pytest
import torch

from captum_ltx.benchmark import Sample, run_benchmark
from captum_ltx.benchmark import harness
from conftest import tiny_cnn, tiny_vit

METHODS = {"random": {}, "gradcam": {}, "iia": {"n_steps": 2}, "ltx": {"finetune_steps": 2}}


def samples(n=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[4 * i : 4 * i + 12, 8:20] = True
        out.append(Sample(f"img{i}", torch.randn(3, 32, 32, generator=g), target=i if i else None, mask=mask))
    return out


def lines(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("make", [tiny_cnn, tiny_vit], ids=["cnn", "vit"])
def test_harness_end_to_end(make, tmp_path):
    model = make()
    summary = run_benchmark(model, samples(), METHODS, tmp_path, model_name="tiny", track="synthetic", rise_steps=4, progress=False)
    records = lines(tmp_path)
    assert len(records) == 3 * len(METHODS)
    assert {(r["image"], r["method"]) for r in records} == {(s.id, m) for s in samples() for m in METHODS}
    by_image = {}
    for r in records:  # every method explains the same image for the same target
        by_image.setdefault(r["image"], set()).add(r["target"])
        assert {"pos_auc", "neg_auc", "del_auc", "ins_auc", "rise_deletion", "rise_insertion", "adp", "pic", "mufidelity", "miou", "map",
                "pointing_game", "mass_inside", "pixel_accuracy", "randomisation", "class_sensitivity", "seconds"} <= set(r["metrics"])
        assert len(r["curves"]["pos_auc"]) == 10 and len(r["curves"]["rise_insertion"]) == 5
    assert all(len(t) == 1 for t in by_image.values())
    assert by_image["img1"] == {1} and by_image["img2"] == {2}
    text = open(summary).read()
    for m in METHODS:
        assert f"| {m} |" in text
    assert "(3)" in text and "pos_auc ↓" in text and "neg_auc ↑" in text
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_harness_resumes_after_an_interruption(tmp_path, monkeypatch):
    model = tiny_cnn()
    real_score, calls = harness._score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(harness, "_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(model, samples(), METHODS, tmp_path, rise_steps=4, sanity=False, progress=False)
    assert len(lines(tmp_path)) == 4
    monkeypatch.setattr(harness, "_score", real_score)
    run_benchmark(model, samples(), METHODS, tmp_path, rise_steps=4, sanity=False, progress=False)
    records = lines(tmp_path)
    assert len(records) == 12 and len({(r["image"], r["method"]) for r in records}) == 12
    with pytest.raises(ValueError, match="other images or settings"):
        run_benchmark(model, samples(2), METHODS, tmp_path, rise_steps=4, sanity=False, progress=False)


def test_methods_can_be_added_to_a_finished_run_but_not_changed(tmp_path):
    model = tiny_cnn()
    run_benchmark(model, samples(2), {"random": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    first = lines(tmp_path)
    run_benchmark(model, samples(2), {"saliency": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    records = lines(tmp_path)
    assert records[:2] == first and {r["method"] for r in records[2:]} == {"saliency"}
    assert set(json.loads((tmp_path / "config.json").read_text())["methods"]) == {"random", "saliency"}
    assert "| random |" in (tmp_path / "summary.md").read_text() and "| saliency |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="random with other options"):
        run_benchmark(model, samples(2), {"random": {"seed": 3}}, tmp_path, rise_steps=4, sanity=False, progress=False)


def test_a_resumed_run_adds_metrics_its_records_lack(tmp_path):
    model = tiny_cnn()
    run_benchmark(model, samples(2), {"saliency": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    complete = lines(tmp_path)
    older = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "mufidelity"}} for r in complete]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in older))
    run_benchmark(model, samples(2), {"saliency": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    assert lines(tmp_path) == complete  # the same records, in the same order, seconds kept
    assert "mufidelity ↑" in (tmp_path / "summary.md").read_text()


def test_adding_a_metric_refuses_a_method_whose_maps_changed(tmp_path):
    model = tiny_cnn()
    run_benchmark(model, samples(2), {"random": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    records = lines(tmp_path)
    for r in records:
        del r["metrics"]["mufidelity"]
        r["metrics"]["adp"] += 5.0  # as if recorded from another map
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="'random' no longer gives the map recorded for 'img0'"):
        run_benchmark(model, samples(2), {"random": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)


def test_merging_keeps_the_completed_record_whatever_the_files_order(tmp_path):
    old = {"image": "img0", "method": "random", "metrics": {"adp": 1.0}}
    completed = {**old, "metrics": {"adp": 1.0, "mufidelity": 0.5}}
    # rank 2 of an interrupted 3-process run left the old record; a 2-process resume completed it as rank 0
    (tmp_path / "results.rank0.jsonl").write_text(json.dumps(completed) + "\n")
    (tmp_path / "results.rank2.jsonl").write_text(json.dumps(old) + "\n")
    harness._merge_shards(str(tmp_path), samples(1), {"random": {}})
    assert lines(tmp_path) == [completed] and not list(tmp_path.glob("results.rank*"))


def test_a_line_cut_by_an_interruption_does_not_swallow_the_next_record(tmp_path):
    model = tiny_cnn()
    run_benchmark(model, samples(2), {"random": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    first = lines(tmp_path)[0]
    (tmp_path / "results.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(first)[:40])  # cut mid-line
    run_benchmark(model, samples(2), {"random": {}}, tmp_path, rise_steps=4, sanity=False, progress=False)
    assert [(r["image"], r["method"]) for r in lines(tmp_path)] == [("img0", "random"), ("img1", "random")]


def test_against_reference_places_each_mean_by_the_metric_direction(tmp_path):
    from captum_ltx.benchmark.report import against_reference

    def record(image, method, **metrics):
        return json.dumps({"image": image, "method": method, "metrics": metrics}) + "\n"

    rows = []
    for i, spread in enumerate([-1.0, 0.0, 1.0]):  # the reference's interval: about [9.3, 10.7] on each
        rows.append(record(f"img{i}", "occlusion", pos_auc=10 + spread, neg_auc=10 + spread, seconds=1.0))
        rows.append(record(f"img{i}", "low", pos_auc=5.0, neg_auc=5.0, seconds=9.0))
        rows.append(record(f"img{i}", "level", pos_auc=10.0, neg_auc=10.0 + spread))
    rows.append(record("img3", "occlusion", miou=0.5))  # on one image only: no interval to compare with
    rows.append(record("img3", "low", miou=0.1))
    (tmp_path / "results.jsonl").write_text("".join(rows))
    verdicts = against_reference(tmp_path, "occlusion")
    assert verdicts == {
        "low": {"pos_auc": "better", "neg_auc": "worse"},  # POS: lower is better; NEG: higher is
        "level": {"pos_auc": "inside", "neg_auc": "inside"},
    }
    with pytest.raises(ValueError, match="`reference`: no method 'sobol'"):
        against_reference(tmp_path, "sobol")
