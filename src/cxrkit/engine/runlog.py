"""The run folder's human-readable records: the per-epoch CSV and the curves plot.

Both are rewritten after every epoch (each atomically), so a run
that is killed leaves records that match its ``last.pt``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cxrkit.artefacts import atomic_path, csv_row


def write_history(history: list[dict], path: Path) -> None:
    """Write one row per epoch to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(csv_row(history[0]))
        w.writerows(csv_row(h.get(k, "") for k in history[0]) for h in history)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss (train and validation) and validation mean AUROC per epoch, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    b.plot(ep, [h["val_mean_auroc"] for h in history], "o-", color="C2")
    b.set(xlabel="epoch", ylabel="mean AUROC", title="Validation mean AUROC", ylim=(0.4, 1.0))
    b.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
