"""Runs the benchmark harness: the same as ``captum-ltx benchmark`` (see ``--help``).

Example (the committed EfficientNet-Lite0 results):

    python benchmarks/run.py --model efficientnet_lite0 --track imagenet-photos --sanity-limit 12 --out benchmarks/results/lite0-photos

Interrupt it at any time; the same command resumes from results.jsonl.
"""

import sys

from captum_ltx.cli import main

if __name__ == "__main__":
    main(["benchmark"] + sys.argv[1:])
