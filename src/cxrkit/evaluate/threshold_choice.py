"""Which decision thresholds ``cxrkit evaluate`` writes for ``predict`` and ``serve``.

A threshold is chosen per finding on the validation split (never on test) by one rule:

``youden``            maximise Youden's J (sensitivity + specificity - 1), the default
``max_f1``            maximise F1
``sensitivity=0.9``   the highest threshold reaching that sensitivity (a screening rule)
``specificity=0.95``  the lowest threshold reaching that specificity (a rule-in rule)

and any finding can be fixed by hand (``--threshold Pneumonia=0.3``). A threshold fitted on
a handful of positive images is mostly noise: 89 validation images with one Pneumonia
positive gave a test specificity of 0.076. So every threshold records the positive images
(and patients) it came from, and one fitted on fewer than :data:`MIN_POSITIVES` positives
is warned about, named in ``metrics.json``'s notes and in ``thresholds.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cxrkit.metrics import max_f1_threshold, target_threshold, youden_threshold

#: The rules that are always reported side by side (tables and report).
THRESHOLD_METHODS = ("youden", "max_f1")
#: Rules with a target: ``NAME=VALUE``, the value in (0, 1).
TARGET_METHODS = ("sensitivity", "specificity")
#: A threshold fitted on fewer positive images than this is warned about.
MIN_POSITIVES = 10


def parse_method(text: str) -> tuple[str, float | None]:
    """``"youden"`` -> ``("youden", None)``; ``"sensitivity=0.9"`` -> ``("sensitivity",
    0.9)``. A one-line ValueError naming the allowed forms otherwise."""
    name, _, value = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if name in THRESHOLD_METHODS and not value:
        return name, None
    if name in TARGET_METHODS and value:
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0.0 < target < 1.0:
            return name, target
    raise ValueError(
        f"threshold method {text!r}: use youden, max_f1, sensitivity=T or "
        "specificity=T with 0 < T < 1 (e.g. sensitivity=0.9)"
    )


def parse_overrides(items, findings) -> dict[str, float]:
    """``["Pneumonia=0.3", ...]`` -> ``{"Pneumonia": 0.3}``; each finding must be the
    model's and each value in [0, 1]."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        try:
            t = float(value) if sep else float("nan")
        except ValueError:
            t = float("nan")
        if name not in findings:
            raise ValueError(
                f"--threshold {item!r}: {name!r} is not one of the model's "
                f"findings ({', '.join(findings)})"
            )
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"--threshold {item!r}: give FINDING=VALUE with 0 <= VALUE <= 1")
        out[name] = t
    return out


def fit_threshold(
    labels: np.ndarray, probs: np.ndarray, method: str, target: float | None = None
) -> float:
    """One finding's threshold by ``method`` (NaN when its labels have one class)."""
    if method == "youden":
        return youden_threshold(labels, probs)
    if method == "max_f1":
        return max_f1_threshold(labels, probs)
    return target_threshold(labels, probs, **{method: target})


@dataclass
class ThresholdChoice:
    """The thresholds written to ``thresholds.json``, and where each came from."""

    method: str  #: the rule as given ("youden", "sensitivity=0.9")
    values: dict[str, float | None]  #: finding -> threshold (None: undefined)
    positives: dict[str, int]  #: finding -> positive images it was fitted on
    positive_patients: dict[str, int]  #: finding -> patients among them
    overrides: dict[str, float] = field(default_factory=dict)
    min_positives: int = MIN_POSITIVES

    @property
    def few(self) -> list[str]:
        """Findings whose fitted threshold rests on fewer than ``min_positives`` positives."""
        return [
            f
            for f, n in self.positives.items()
            if f not in self.overrides and n < self.min_positives
        ]

    def warning(self, fit_split: str) -> str | None:
        if not self.few:
            return None
        shown = ", ".join(
            f"{f} ({self.positives[f]} image(s), {self.positive_patients[f]} patient(s))"
            for f in self.few
        )
        return (
            f"thresholds fitted on fewer than {self.min_positives} positive {fit_split} "
            f"images: {shown}; expect their test sensitivity and specificity to be far "
            "from the chosen rule (prepare with a larger --val-fraction, or fix them "
            "with --threshold FINDING=VALUE)"
        )

    def record(self) -> dict:
        """What ``metrics.json`` (``thresholds.used``) and ``thresholds.json`` keep."""
        return {
            "method": self.method,
            "values": self.values,
            "positives": self.positives,
            "positive_patients": self.positive_patients,
            "overrides": self.overrides,
            "min_positives": self.min_positives,
            "few_positives": self.few,
        }


def choose_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    patients,
    findings,
    *,
    method: str = "youden",
    overrides: dict[str, float] | None = None,
) -> ThresholdChoice:
    """Thresholds by ``method`` on the fit split's ``labels``/``probs`` (N, F), with
    ``overrides`` taking the place of the fitted value for their findings."""
    name, target = parse_method(method)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(findings))
    if unknown:
        raise ValueError(
            f"--threshold for {', '.join(unknown)}: not among the model's "
            f"findings ({', '.join(findings)})"
        )
    patients = np.asarray(patients)
    values, positives, pos_patients = {}, {}, {}
    for j, f in enumerate(findings):
        y = labels[:, j]
        pos = y == 1
        positives[f] = int(pos.sum())
        pos_patients[f] = int(len(np.unique(patients[pos])))
        t = overrides[f] if f in overrides else fit_threshold(y, probs[:, j], name, target)
        values[f] = None if t is None or not math.isfinite(t) else float(t)
    return ThresholdChoice(
        method=method,
        values=values,
        positives=positives,
        positive_patients=pos_patients,
        overrides=overrides,
    )


__all__ = [
    "MIN_POSITIVES",
    "THRESHOLD_METHODS",
    "TARGET_METHODS",
    "ThresholdChoice",
    "choose_thresholds",
    "fit_threshold",
    "parse_method",
    "parse_overrides",
]
