"""Run by tests/test_distributed.py under torchrun: pretrains on two processes and saves each rank's result."""

import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(__file__))
from conftest import IMAGE, tiny_cnn  # noqa: E402

from captum_ltx import pretrain  # noqa: E402

dist.init_process_group("gloo")
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
train = TensorDataset(torch.randn(16, 3, IMAGE, IMAGE, generator=g), torch.randint(0, 5, (16,), generator=g))
val = TensorDataset(torch.randn(6, 3, IMAGE, IMAGE, generator=g), torch.randint(0, 5, (6,), generator=g))
explainer = pretrain(tiny_cnn(), train, val_data=val, epochs=2, batch_size=4, checkpoint_dir=os.path.join(out, "ckpt"), progress=False)
torch.save(explainer.state_dict(), os.path.join(out, f"rank{dist.get_rank()}.pt"))
with open(os.path.join(out, f"rank{dist.get_rank()}.txt"), "w") as f:
    f.write(repr(explainer.config["training"]["history"]))
dist.destroy_process_group()
