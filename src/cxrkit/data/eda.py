"""``cxrkit stats``: what is in a label table, per split, as tables and PNG plots.

Why: before training on ChestX-ray14 one should see how rare each finding is (Hernia is
0.2 % of images), which findings travel together, and whether the splits differ in age,
sex, view or patients' number of follow-ups. :func:`describe` answers that in a few
seconds for all 112,120 images and writes to ``out_dir``:

``prevalence.csv/.png``    per finding (and No Finding), per split and "all": positive
                           images (count, % of the split's images) and patients with at
                           least one positive image (count, % of the split's patients)
``cooccurrence.csv/.png``  14x14 image counts of finding pairs over all images
``demographics.csv/.png``  age (years), sex, view, findings per image, images per patient
``boxes.csv/.png``         NIH's boxes per finding and where their centres sit (if given)
``summary.md``             the headline numbers as Markdown tables
``manifest.json``          what made the folder: versions, title, row counts, files

Plots are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas,
never through ``pyplot``: no global backend switch (safe to call from a notebook or a
server thread), and figures are freed as soon as they are saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from cxrkit import __version__
from cxrkit.artefacts import (
    atomic_path,
    make_folder,
    versions,
    write_csv,
    write_json,
    write_text,
)
from cxrkit.data.nih import MAX_AGE_YEARS, NIH_IMAGE_SIZE
from cxrkit.data.splits import SPLITS
from cxrkit.labels import FINDINGS, NO_FINDING, canonical_finding
from cxrkit.messages import quote

ALL = "all"
DPI = 120
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c", ALL: "#4d4d4d"}
#: Bins of the images-per-patient column of ``demographics.csv`` (upper edges inclusive).
PATIENT_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None))


@dataclass
class EdaResult:
    """The tables :func:`describe` computed (also written as CSV) and the files it wrote."""

    prevalence: pd.DataFrame  #: long: finding, split, images, pct_images, patients, pct_patients
    cooccurrence: pd.DataFrame  #: 14x14 image counts; diagonal = images with the finding
    conditional: pd.DataFrame  #: P(column | row) in [0, 1]; NaN where the row finding is absent
    demographics: pd.DataFrame  #: long: split, quantity, category, value, unit, pct
    boxes: pd.DataFrame | None  #: per finding: boxes, images, centre and size in 1024-px space
    summary: str  #: the Markdown of ``summary.md``
    files: list[Path] = field(default_factory=list)


def _with_split(labels: pd.DataFrame, split: pd.DataFrame | None) -> tuple[pd.DataFrame, list]:
    """Label rows with a ``split`` column, and the groups to report (splits, then "all")."""
    missing = [c for c in ("image_id", "patient_id", *FINDINGS) if c not in labels]
    if missing or len(labels) == 0:
        raise ValueError(f"label table is empty or lacks column(s) {missing} (see cxrkit.data.nih)")
    t = labels.copy()
    if NO_FINDING not in t:
        t[NO_FINDING] = (t[list(FINDINGS)].sum(axis=1) == 0).astype(np.uint8)
    if split is None:
        t["split"] = ALL
        return t, [ALL]
    twice = split["image_id"][split["image_id"].duplicated()]
    if len(twice):
        raise ValueError(
            f"split table lists {len(twice)} image(s) twice, e.g. {quote(twice.iloc[0])}"
        )
    t["split"] = t["image_id"].map(split.set_index("image_id")["split"])
    if t["split"].isna().any():
        lost = t.loc[t["split"].isna(), "image_id"]
        raise ValueError(
            f"{len(lost)} labelled image(s) have no split, e.g. {lost.head(5).tolist()}"
        )
    present = set(t["split"])
    return t, [s for s in SPLITS if s in present] + sorted(present - set(SPLITS)) + [ALL]


def _rows(t: pd.DataFrame, group: str) -> pd.DataFrame:
    return t if group == ALL else t[t["split"] == group]


def prevalence_table(t: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Positive images and patients per finding and group (``%`` of the group's total)."""
    cols = [*FINDINGS, NO_FINDING]
    out = []
    for g in groups:
        sub = _rows(t, g)
        per_patient = sub.groupby("patient_id")[cols].max()
        images, patients = sub[cols].sum(), per_patient.sum()
        out.append(
            pd.DataFrame(
                {
                    "finding": cols,
                    "split": g,
                    "images": images.to_numpy().astype(np.int64),
                    "pct_images": 100.0 * images.to_numpy() / max(len(sub), 1),
                    "patients": patients.to_numpy().astype(np.int64),
                    "pct_patients": 100.0 * patients.to_numpy() / max(len(per_patient), 1),
                    "split_images": len(sub),
                    "split_patients": len(per_patient),
                }
            )
        )
    return pd.concat(out, ignore_index=True)


def cooccurrence_table(t: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Image counts of finding pairs (symmetric) and P(column | row) over all images.

    Cell (row A, column B) of the conditional table is the share of A-positive images
    that are also B-positive: e.g. P(Effusion | Cardiomegaly) = 0.34 means a third of the
    Cardiomegaly images also carry Effusion. It is not symmetric; the counts are.
    """
    x = t[list(FINDINGS)].to_numpy(dtype=np.int64)
    counts = x.T @ x
    diag = np.diag(counts).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(diag[:, None] > 0, counts / diag[:, None], np.nan)
    return (
        pd.DataFrame(counts, index=list(FINDINGS), columns=list(FINDINGS)),
        pd.DataFrame(cond, index=list(FINDINGS), columns=list(FINDINGS)),
    )


def demographics_table(t: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Long table: per group, age stats (years) and decades, sex, view (images), findings
    per image (images) and images per patient (patients); ``pct`` is within the group."""
    rows: list[tuple] = []
    for g in groups:
        sub = _rows(t, g)

        def add(quantity, counts: pd.Series, unit):
            total = max(int(counts.sum()), 1)
            rows.extend(
                (g, quantity, str(k), int(v), unit, 100.0 * v / total) for k, v in counts.items()
            )

        if "age" in sub:
            age = sub["age"].astype(float)
            ok = age.between(0, MAX_AGE_YEARS)
            a = age[ok]
            for stat, v in (
                ("mean", a.mean()),
                ("median", a.median()),
                ("q25", a.quantile(0.25)),
                ("q75", a.quantile(0.75)),
                ("min", a.min()),
                ("max", a.max()),
            ):
                rows.append((g, "age_years", stat, float(v), "years", np.nan))
            decade = (a // 10 * 10).clip(upper=100).astype(int)
            counts = decade.value_counts().sort_index()
            counts.index = [f"{d}-{d + 9}" if d < 100 else "100+" for d in counts.index]
            add(
                "age_decade",
                pd.concat([counts, pd.Series({"missing": int((~ok).sum())})]),
                "images",
            )
        for col in ("sex", "view"):
            if col in sub:
                add(col, sub[col].value_counts().sort_index(), "images")
        k = sub[list(FINDINGS)].sum(axis=1)
        add("findings_per_image", k.value_counts().sort_index(), "images")
        per_patient = sub.groupby("patient_id").size()
        bins = {
            f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi else f"{lo}+"): int(
                ((per_patient >= lo) & (per_patient <= (hi or np.inf))).sum()
            )
            for lo, hi in PATIENT_BINS
        }
        add("images_per_patient", pd.Series(bins), "patients")
    return pd.DataFrame(rows, columns=["split", "quantity", "category", "value", "unit", "pct"])


def boxes_table(b: pd.DataFrame) -> pd.DataFrame:
    """Per finding: boxes, images with a box, mean centre and median size (1024-px space).

    ``b`` has NIH's box columns plus the centre ``cx, cy`` (see :func:`describe`)."""
    g = b.groupby("finding")
    out = pd.DataFrame(
        {
            "boxes": g.size(),
            "images": g["image_id"].nunique(),
            "mean_cx": g["cx"].mean(),
            "mean_cy": g["cy"].mean(),
            "median_w": g["w"].median(),
            "median_h": g["h"].median(),
        }
    )
    return out.reindex([f for f in FINDINGS if f in out.index]).rename_axis("finding").reset_index()


# ---------------------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    fig.clear()
    return path


def plot_prevalence(prev: pd.DataFrame, groups: list[str], path: Path, title: str) -> Path:
    """Two panels (% of images, % of patients), findings sorted by prevalence in "all"."""
    order = prev[prev["split"] == ALL].sort_values("pct_images")["finding"].tolist()
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y, h = np.arange(len(order)), 0.8 / len(groups)
    for ax, what in zip(axes, ("images", "patients")):
        col = f"pct_{what}"
        for i, g in enumerate(groups):
            p = prev[prev["split"] == g].set_index("finding").loc[order]
            n = int(p[f"split_{what}"].iloc[0])
            pos = y - 0.4 + h * (len(groups) - 1 - i) + h / 2
            ax.barh(pos, p[col], height=h, color=SPLIT_COLOURS.get(g), label=f"{g} (n={n:,})")
            if g == ALL:
                for yy, v, c in zip(pos, p[col], p[what]):
                    ax.text(v, yy, f" {v:.1f}% ({c:,})", va="center", fontsize=7)
        ax.set(
            xlabel=f"% of {what} in the split with the finding",
            title=f"Positive {what}",
            xlim=(0, prev[col].max() * 1.3),
        )
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(y, order)
    fig.suptitle(f"Finding prevalence per split{_tag(title)}")
    return _save(fig, path)


def plot_cooccurrence(
    counts: pd.DataFrame, cond: pd.DataFrame, n_images: int, path: Path, title: str
) -> Path:
    """Heatmap of P(column | row) in %, diagonal greyed out and labelled with image counts."""
    n = len(FINDINGS)
    pct = 100.0 * cond.to_numpy()
    pct[np.eye(n, dtype=bool)] = np.nan
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    fig = Figure(figsize=(10.5, 9), layout="constrained")
    ax = fig.subplots()
    vmax = max(float(np.nanmax(pct)) if np.isfinite(pct).any() else 1.0, 1.0)
    im = ax.imshow(pct, cmap=cmap, vmin=0, vmax=vmax)
    for i in range(n):
        for j in range(n):
            if i == j:
                ax.text(
                    j,
                    i,
                    f"{counts.iat[i, i]:,}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold",
                )
            elif np.isfinite(pct[i, j]):
                text = "<1" if 0 < pct[i, j] < 0.5 else f"{pct[i, j]:.0f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if pct[i, j] < 0.6 * vmax else "black",
                )
    ax.set_xticks(range(n), FINDINGS, rotation=45, ha="right")
    ax.set_yticks(range(n), FINDINGS)
    ax.set(xlabel="column finding B", ylabel="row finding A")
    fig.colorbar(im, ax=ax, shrink=0.8, label="P(B | A): % of A-positive images also B-positive")
    ax.set_title(
        f"Finding co-occurrence, all {n_images:,} images"
        f"{_tag(title)}\n(diagonal: images with the finding; cells: % of row)"
    )
    return _save(fig, path)


def plot_demographics(t: pd.DataFrame, groups: list[str], path: Path, title: str) -> Path:
    """Age density, sex, view, findings per image, images per patient (log); a colour per split."""
    fig = Figure(figsize=(16, 9), layout="constrained")
    ax = fig.subplot_mosaic([["age"] * 2 + ["sex"] * 2 + ["view"] * 2, ["k"] * 3 + ["pp"] * 3])  # type: ignore[list-item]
    ax_age, ax_sex, ax_view, ax_k, ax_pp = (ax[k] for k in ("age", "sex", "view", "k", "pp"))
    w = 0.8 / len(groups)
    max_pp = int(t.groupby("patient_id").size().max())
    # integer bins, wider on the right; counts are divided by the integers a bin spans
    pp_edges = np.unique(np.round(np.logspace(0, np.log10(max_pp + 1), 16))) - 0.5
    max_k = int(t[list(FINDINGS)].sum(axis=1).max())
    for i, g in enumerate(groups):
        sub, colour = _rows(t, g), SPLIT_COLOURS.get(g)
        if "age" in sub:
            age = sub["age"].astype(float)
            ok = age.between(0, MAX_AGE_YEARS)
            dens, edges = np.histogram(age[ok], bins=np.arange(0, 102, 2), density=True)
            ax_age.stairs(dens, edges, color=colour, lw=1.6, label=f"{g} (n={int(ok.sum()):,})")
        for a, col in ((ax_sex, "sex"), (ax_view, "view")):
            if col in sub:
                share = 100.0 * sub[col].value_counts(normalize=True).reindex(
                    sorted(t[col].unique()), fill_value=0
                )
                x = np.arange(len(share)) - 0.4 + w * (i + 0.5)
                a.bar(x, share.to_numpy(), width=w, color=colour, label=g)
                for xx, v in zip(x, share):
                    a.text(xx, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
                a.set_xticks(range(len(share)), share.index)
        k = (
            sub[list(FINDINGS)]
            .sum(axis=1)
            .value_counts(normalize=True)
            .reindex(range(max_k + 1), fill_value=0)
        )
        ax_k.bar(
            k.index - 0.4 + w * (i + 0.5), 100.0 * k.to_numpy(), width=w, color=colour, label=g
        )
        per_patient = sub.groupby("patient_id").size()
        hist, _ = np.histogram(per_patient, bins=pp_edges)
        hist = hist / np.diff(pp_edges)
        ax_pp.stairs(
            np.where(hist > 0, hist, np.nan),
            pp_edges,
            color=colour,
            lw=1.6,
            label=f"{g} ({len(per_patient):,} patients, mean "
            f"{len(sub) / max(len(per_patient), 1):.1f} images each)",
        )
    ax_age.set(title="Age", xlabel="age (years)", ylabel="density (fraction of images per year)")
    ax_sex.set(title="Sex", xlabel="patient sex", ylabel="% of the split's images")
    ax_view.set(title="View position", xlabel="view", ylabel="% of the split's images")
    ax_k.set(
        title="Findings per image",
        xlabel="number of the 14 findings (0 = No Finding)",
        ylabel="% of the split's images (log)",
        yscale="log",
    )
    ax_k.set_xticks(range(max_k + 1))
    ax_pp.set(
        title="Images per patient",
        xlabel="images of one patient (log)",
        ylabel="patients per value (log; wide bins averaged)",
        xscale="log",
        yscale="log",
    )
    ticks = [v for v in (1, 2, 3, 5, 10, 20, 50, 100, 200) if v <= max_pp]
    ax_pp.set_xticks(ticks, [str(v) for v in ticks])
    ax_pp.xaxis.set_minor_formatter(NullFormatter())
    for a in ax.values():
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"Demographics per split{_tag(title)}")
    return _save(fig, path)


def plot_boxes(b: pd.DataFrame, table: pd.DataFrame, path: Path, title: str) -> Path:
    """Boxes per finding (bars) and box centres on NIH's 1024x1024 frame (y down)."""
    fig = Figure(figsize=(14, 6.5), layout="constrained")
    ax_n, ax_xy = fig.subplots(1, 2, width_ratios=[1, 1.3])
    colours = {f: matplotlib.colormaps["tab10"](i) for i, f in enumerate(table["finding"])}
    ax_n.barh(table["finding"], table["boxes"], color=[colours[f] for f in table["finding"]])
    for yy, (nb, ni) in enumerate(zip(table["boxes"], table["images"])):
        ax_n.text(nb, yy, f" {nb} on {ni} image{'s' * (ni != 1)}", va="center", fontsize=8)
    ax_n.invert_yaxis()
    ax_n.set(title="Boxes per finding", xlabel="boxes", xlim=(0, table["boxes"].max() * 1.4))
    ax_n.xaxis.set_major_locator(MaxNLocator(integer=True))
    for f in table["finding"]:
        s = b[b["finding"] == f]
        ax_xy.scatter(
            s["cx"], s["cy"], s=14, alpha=0.7, color=colours[f], label=f, edgecolors="none"
        )
    ax_xy.set(
        xlim=(0, NIH_IMAGE_SIZE),
        ylim=(NIH_IMAGE_SIZE, 0),
        aspect="equal",
        title="Box centres (image frame, patient's right on the left)",
        xlabel="x (pixels of the 1024x1024 PNG)",
        ylabel="y (pixels, down)",
    )
    ax_xy.axvline(NIH_IMAGE_SIZE / 2, color="grey", lw=0.6, ls="--")
    for a in (ax_n, ax_xy):
        a.grid(alpha=0.3)
    ax_xy.legend(fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(
        f"NIH bounding boxes: {len(b):,} boxes on {b['image_id'].nunique():,} images{_tag(title)}"
    )
    return _save(fig, path)


def _tag(title: str) -> str:
    return f" - {title}" if title else ""


def summary_markdown(t, groups, prev, n_boxes, title) -> str:
    """Headline numbers per split and per-finding prevalence as Markdown tables."""

    def row(name, values):
        return f"| {name} | " + " | ".join(values) + " |"

    by = {g: _rows(t, g) for g in groups}
    age = {g: s["age"].astype(float) if "age" in s else None for g, s in by.items()}
    lines = [
        f"# cxrkit stats{_tag(title)}",
        "",
        f"Made by cxrkit {__version__} (`cxrkit.eda.describe`) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        row("", groups),
        "|---" * (len(groups) + 1) + "|",
        row("images", [f"{len(by[g]):,}" for g in groups]),
        row("patients", [f"{by[g]['patient_id'].nunique():,}" for g in groups]),
    ]
    if all(a is not None for a in age.values()):
        lines.append(
            row(
                f"ages missing or impossible (> {MAX_AGE_YEARS:g} y)",
                [f"{int((~age[g].between(0, MAX_AGE_YEARS)).sum()):,}" for g in groups],  # type: ignore[union-attr]
            )
        )
    if n_boxes is not None:
        lines.append(row("images with boxes", [f"{n_boxes.get(g, 0):,}" for g in groups]))
    lines += [
        "",
        "(`read_data_entry` turns NIH's impossible ages into NaN.)",
        "",
        "## Prevalence: % of images (positive images)",
        "",
        row("finding", groups),
        "|---" * (len(groups) + 1) + "|",
    ]
    p = prev.set_index(["finding", "split"])
    for f in (*FINDINGS, NO_FINDING):
        lines.append(
            row(
                f,
                [f"{p.at[(f, g), 'pct_images']:.2f} ({p.at[(f, g), 'images']:,})" for g in groups],
            )
        )
    return "\n".join(lines) + "\n"


def describe_folder(
    root: str | Path, out_dir: str | Path, *, val_fraction: float = 0.1, seed: int = 0
) -> EdaResult:
    """:func:`describe` of a prepared folder (its labels, split and boxes) or of a release
    folder (its labels and boxes, split by the official lists when it has them, with
    ``val_fraction`` and ``seed``): ``cxrkit stats``."""
    from cxrkit.artefacts import PreparedFolder

    if PreparedFolder(Path(root)).dataset.exists():
        from cxrkit.data.prepare import load_prepared

        p = load_prepared(root)
        labels, split_table, boxes = p.labels, p.split, p.boxes
    else:
        from cxrkit.data.prepare import make_split
        from cxrkit.data.release import load_release

        rel = load_release(root)
        labels, boxes = rel.labels, rel.boxes
        split_table = None
        if rel.has_official_split:
            split_table, _ = make_split(rel, val_fraction=val_fraction, seed=seed)
    return describe(labels, split_table, out_dir, boxes=boxes, title=str(root))


def describe(
    labels: pd.DataFrame,
    split: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    boxes: pd.DataFrame | None = None,
    title: str = "",
) -> EdaResult:
    """Tables and plots of a label table, per split; see the module docstring for files.

    ``labels`` is :func:`cxrkit.data.nih.read_data_entry`'s table (``age``, ``sex`` and
    ``view`` may be absent: their panels are then skipped). ``split`` is ``image_id,
    split`` (e.g. :func:`cxrkit.data.splits.official_split`); every labelled image must
    have one, rows for other images are ignored; ``None`` reports "all" only. ``boxes``
    are :func:`cxrkit.data.nih.read_bbox_list` rows in the 1024-px space; boxes on images
    absent from ``labels`` are left out.
    """
    out = make_folder(out_dir)
    t, groups = _with_split(labels, split)
    prev = prevalence_table(t, groups)
    counts, cond = cooccurrence_table(t)
    demo = demographics_table(t, groups)
    files = []

    def csv(df: pd.DataFrame, name: str, **kw) -> None:
        write_csv(
            df.round(4),
            out / name,
            index=kw.get("index", True),  # counts exact
            float_format="%.10g",
        )
        files.append(out / name)

    table = prev.drop(columns=["split_images", "split_patients"])
    csv(table, "prevalence.csv", index=False)
    files.append(plot_prevalence(prev, groups, out / "prevalence.png", title))
    csv(counts.rename_axis("finding"), "cooccurrence.csv")
    files.append(plot_cooccurrence(counts, cond, len(t), out / "cooccurrence.png", title))
    csv(demo, "demographics.csv", index=False)
    files.append(plot_demographics(t, groups, out / "demographics.png", title))
    b = box_table = n_boxed = None
    if boxes is not None and len(boxes):
        b = boxes[boxes["image_id"].isin(pd.Index(t["image_id"]))].copy()
        b["finding"] = [canonical_finding(f, allow_no_finding=False) for f in b["finding"]]
        b["cx"], b["cy"] = b["x"] + b["w"] / 2, b["y"] + b["h"] / 2
        if len(b):
            csv(box_table := boxes_table(b), "boxes.csv", index=False)
            files.append(plot_boxes(b, box_table, out / "boxes.png", title))
        boxed = t[t["image_id"].isin(pd.Index(b["image_id"]))]
        n_boxed = {**boxed["split"].value_counts().to_dict(), ALL: len(boxed)}
    if box_table is None:  # no stale box plot from an earlier run in the same folder
        for name in ("boxes.csv", "boxes.png"):
            (out / name).unlink(missing_ok=True)
    write_text(summary := summary_markdown(t, groups, prev, n_boxed, title), out / "summary.md")
    files.append(out / "summary.md")
    manifest = {
        "made_by": "cxrkit.eda.describe",
        "cxrkit": __version__,
        "title": title,
        "created": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
        "versions": versions("pandas", "matplotlib"),
        "images": len(t),
        "splits": groups,
        "boxes": 0 if b is None else len(b),
        "files": [f.name for f in files],
    }
    write_json(manifest, out / "manifest.json")
    files.append(out / "manifest.json")
    return EdaResult(
        prevalence=table,
        cooccurrence=counts,
        conditional=cond,
        demographics=demo,
        boxes=box_table,
        summary=summary,
        files=files,
    )
