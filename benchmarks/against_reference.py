"""Where each method of a benchmark run falls against one reference method's 95% intervals.

    python benchmarks/against_reference.py benchmarks/results/lite0-masks --reference occlusion \\
        --methods sobol_g7_d4=sobol,sobol_g5_d8=sobol

Prints a Markdown table (rows: the quality metrics; cells: the method's mean and whether it is
inside, better or worse than the reference's interval) and the methods ordered by how many metrics
they lose, then by how many they win.
"""

from __future__ import annotations

import argparse

import numpy as np

from captum_ltx.benchmark.report import (
    METRICS,
    against_reference,
    bootstrap_interval,
    format_value,
    load_results,
    metric_values,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a benchmark output folder (with results.jsonl)")
    parser.add_argument("--reference", required=True, help="the method whose intervals are the bar")
    parser.add_argument("--methods", default=None, help="comma-separated labels (default: every method)")
    args = parser.parse_args()

    verdicts = against_reference(args.run, args.reference)
    values = metric_values(load_results(args.run))
    methods = args.methods.split(",") if args.methods else list(verdicts)
    unknown = [m for m in methods if m not in verdicts]
    if unknown:
        parser.error(f"--methods: no method {', '.join(unknown)} in {args.run}")
    metrics = [m for m in METRICS if any(m in verdicts[meth] for meth in methods)]

    print(f"| metric | {args.reference} | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 2) + "|")
    for m in metrics:
        ref = np.asarray(values[args.reference][m], dtype=float)
        low, high = bootstrap_interval(ref)
        cells = [
            f"{format_value(m, float(np.mean(values[meth][m])))} {verdicts[meth][m]}" if m in verdicts[meth] else ""
            for meth in methods
        ]
        arrow = "↑" if METRICS[m][0] else "↓"
        print(f"| {m} {arrow} | {format_value(m, ref.mean())} [{format_value(m, low)}, {format_value(m, high)}] | " + " | ".join(cells) + " |")
    print()
    counts = {
        meth: (
            [m for m, v in verdicts[meth].items() if v == "worse"],
            [m for m, v in verdicts[meth].items() if v == "better"],
        )
        for meth in methods
    }
    for meth in sorted(methods, key=lambda k: (len(counts[k][0]), -len(counts[k][1]))):
        worse, better = counts[meth]
        print(f"- {meth}: worse on {len(worse)} ({', '.join(worse) or '-'}), better on {len(better)} ({', '.join(better) or '-'})")


if __name__ == "__main__":
    main()
