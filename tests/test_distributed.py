import json
import os
import subprocess
import sys

import torch


def test_pretrain_under_torchrun(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "distributed_pretrain.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for k, v in ranks[0].items():  # averaged gradients keep the two replicas identical
        assert torch.equal(v, ranks[1][k]), k
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()
    assert (tmp_path / "ckpt" / "best" / "config.json").is_file()
    assert (tmp_path / "ckpt" / "state.json").is_file()


def _without_seconds(summary: str) -> list[str]:
    """The summary's table rows without their last column (seconds per image, which no two runs share)."""
    return [line.rsplit("|", 2)[0] for line in summary.splitlines() if line.startswith("| ")]


def test_benchmark_sharded_under_torchrun_writes_what_one_process_writes(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "distributed_benchmark.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for processes in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", script,
                   str(tmp_path / str(processes))]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    single, sharded = tmp_path / "1", tmp_path / "2"
    assert sorted(os.listdir(sharded)) == sorted(os.listdir(single))  # no shard files left behind
    records = [[json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()] for run in (single, sharded)]
    assert len(records[0]) == 5 * 4
    for ours, theirs in zip(*records):
        ours["metrics"].pop("seconds"), theirs["metrics"].pop("seconds")
        assert ours == theirs
    assert _without_seconds((sharded / "summary.md").read_text()) == _without_seconds((single / "summary.md").read_text())
