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
