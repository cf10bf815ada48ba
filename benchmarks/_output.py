"""What the benchmark scripts share: printing a report and writing it where asked."""

from __future__ import annotations

import os


def emit(text: str, out: str | None) -> None:
    """Prints ``text`` and, when ``out`` names a file, writes it there."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
