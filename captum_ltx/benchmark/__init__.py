"""The benchmark harness: methods x model x images, every metric, seconds per explanation."""

from .harness import run_benchmark
from .report import METRICS, summarise
from .tracks import Sample, available_tracks, create_track, register_track

__all__ = [
    "METRICS",
    "Sample",
    "available_tracks",
    "create_track",
    "register_track",
    "run_benchmark",
    "summarise",
]
