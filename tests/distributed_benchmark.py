"""Run by tests/test_distributed.py under torchrun: a benchmark, sharded over the processes there are."""

import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_cnn  # noqa: E402
from test_benchmark import METHODS, samples  # noqa: E402

from captum_ltx._distributed import join_torchrun_group  # noqa: E402
from captum_ltx.benchmark import run_benchmark  # noqa: E402

join_torchrun_group()
run_benchmark(tiny_cnn(), samples(5), METHODS, sys.argv[1], model_name="tiny", track="synthetic", rise_steps=4, progress=False)
if dist.is_initialized():
    dist.destroy_process_group()
