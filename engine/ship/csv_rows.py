"""The predictions CSV that ``predict --csv`` and ``predict --watch`` write (and the bundle's
standalone predict.py copies): a ``path,class,probability`` header, then one row per image with the
probability to six decimals, so the two Sortlab commands and the export produce identical files."""

from __future__ import annotations

PREDICTIONS_CSV_HEADER = ("path", "class", "probability")


def prediction_csv_row(path: str, class_name: str, probability: float) -> tuple[str, str, str]:
    return (path, class_name, f"{probability:.6f}")
