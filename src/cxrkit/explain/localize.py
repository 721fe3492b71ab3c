"""``cxrkit localize``: a checkpoint's saliency maps scored against the held-out boxes.

Which images are scored (said in the output, not just here): the box images of the
evaluated split, as the checkpoint's own split puts them (:mod:`cxrkit.inference.heldout`).
Under NIH's official split every box image is a test image. Under a box fold the images
the fold moved into training are excluded and counted; so are box images in train/val
under a random split. Boxes of findings the model does not predict are counted, not scored.

Output folder (``out``, default ``<run folder>/localize``, where the evaluation report
looks for it):

``localization.json``  everything below plus counts, notes, settings and Wang et al.'s
                       table with the protocol differences
``accuracy.csv``       finding, measure (iobb|iou), threshold, pairs, accuracy,
                       full_image_accuracy (baseline), wang2017_accuracy
``pointing.csv``       finding, pairs, hits, hit_rate, chance, p_value, empty_maps
``summary.md``         the per-finding table in words and numbers, with the notes
``localization.png``   accuracy at T(IoBB)=0.1 and T(IoU)=0.1 per finding (ours, the
                       whole-image baseline, Wang et al.) and pointing hit rate vs chance
``details/pairs.csv``  one row per (image, finding): truth box count, probability, the
                       map's box (cache pixels), IoU, IoBB, pointing hit, box fraction
``examples/*.png``     per finding, the pair whose map's box overlaps its truth box best and
                       the one it overlaps worst (IoBB; ties: the more probable), as overlays
                       with the truth box (green) and the map's box (red), named
                       ``<finding>__best__<image>.png`` / ``__worst__``
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrkit.artefacts import (
    RunFolder,
    atomic_path,
    make_folder,
    write_csv,
    write_json,
    write_text,
    writes_into_run,
)
from cxrkit.data.metadata import metadata_vector
from cxrkit.explain.localization import (
    IOBB_THRESHOLDS,
    IOU_THRESHOLDS,
    WANG_THRESHOLD,
    comparison_table,
    draw_boxes,
    pointing_table,
    score_pair,
    summarise,
)
from cxrkit.explain.overlay import overlay, write_png
from cxrkit.explain.published import (
    PROTOCOL_DIFFERENCES,
    SOURCE,
    WANG_2017_IOBB,
    WANG_2017_IOU,
)
from cxrkit.explain.saliency import METHODS, attention_maps, saliency_maps
from cxrkit.inference.core import LoadedModel, load
from cxrkit.inference.heldout import HeldOut, load_held_out
from cxrkit.metrics import sigmoid

log = logging.getLogger(__name__)


def boxed_pairs(lm: LoadedModel, data, split: str) -> tuple[pd.DataFrame, dict, list[str]]:
    """Boxes (cache pixels) of the images to score, the counts, and notes on what was left out."""
    p = data.prepared
    if p.boxes is None:
        raise ValueError(
            f"{p.root} has no boxes.csv: the release had no BBox_List_2017.csv, "
            "so there is nothing to localise against"
        )
    boxes = p.boxes_in_pixels()
    where = data.split.set_index("image_id")["split"]
    boxes["split"] = boxes["image_id"].map(where)
    box_images = boxes["image_id"].unique()
    in_split = boxes["split"] == split
    moved = set() if data.moved is None else set(data.moved["image_id"])
    known = boxes["finding"].isin(lm.findings)
    counts = {
        "box_images_in_cache": int(len(box_images)),
        "box_images_scored": int(boxes.loc[in_split & known, "image_id"].nunique()),
        "box_images_moved_to_train_by_box_fold": int(len(set(box_images) & moved)),
        "box_images_in_other_splits": {
            s: int(n)
            for s, n in boxes.loc[~in_split]
            .drop_duplicates("image_id")["split"]
            .fillna("none")
            .value_counts()
            .items()
        },
        "boxes_of_findings_not_in_model": int((in_split & ~known).sum()),
        "boxes_scored": int((in_split & known).sum()),
    }
    notes = []
    if data.protocol == "official" and data.box_fold == 0:
        notes.append(
            "official split: every NIH box image is a test image, so all box images "
            "in the cache are scored when split='test'"
        )
    if data.box_fold > 0:
        notes.append(
            f"box fold {data.box_fold}: {counts['box_images_moved_to_train_by_box_fold']} "
            "box images were moved into training by the run and are excluded; only "
            "the box images left in test are scored"
        )
    other = {s: n for s, n in counts["box_images_in_other_splits"].items()}  # type: ignore[attr-defined]
    if other:
        notes.append(f"box images outside split {split!r} are not scored: {other}")
    if counts["boxes_of_findings_not_in_model"]:
        notes.append(
            f"{counts['boxes_of_findings_not_in_model']} boxes are of findings this "
            "model does not predict; not scored"
        )
    scored = boxes.loc[in_split & known].reset_index(drop=True)
    if len(scored) == 0:
        raise ValueError(
            f"no box of a finding this model predicts is on a {split!r} image of "
            f"{p.root} ({counts})"
        )
    return scored, counts, notes


def _score_pairs(
    lm: LoadedModel,
    data: HeldOut,
    pairs: pd.DataFrame,
    *,
    method: str,
    threshold: float,
    batch_size: int,
    examples: int,
    progress: bool,
) -> tuple[list[dict], ExamplePicks]:
    """Make ``method``'s map of each (image, finding) pair and score it against the pair's
    boxes (:func:`score_pair`); returns one row per pair and the telling examples."""
    cache = data.prepared.cache
    labels = data.prepared.labels.set_index("image_id")
    rows, picks = [], ExamplePicks()
    batches = range(0, len(pairs), batch_size)
    for start in tqdm(
        batches, desc=f"localize {method}", unit="batch", disable=not progress, dynamic_ncols=True
    ):
        chunk = pairs.iloc[start : start + batch_size]
        ids = chunk["image_id"].tolist()
        images = torch.from_numpy(np.asarray(cache.images[cache.rows(ids)]))[:, None]
        meta = metadata_vector(labels.loc[ids].reset_index()) if lm.metadata else None
        wanted = [lm.findings.index(f) for f in chunk["finding"]]
        if method == "attention":
            maps = attention_maps(lm, images)[np.arange(len(ids)), wanted]  # type: ignore[index]  # an attention model: checked above
        else:
            maps = saliency_maps(
                lm, images, wanted, method=method, meta=meta, batch_size=batch_size
            )
        probs = sigmoid(lm.logits_from_cached(images, meta))
        for k, r in enumerate(chunk.itertuples()):
            s = score_pair(maps[k], r.truth, threshold=threshold)
            p = float(probs[k, wanted[k]])
            rows.append(
                {
                    "image_id": r.image_id,
                    "finding": r.finding,
                    "truth_boxes": len(r.truth),
                    "probability": p,
                    **s,
                }
            )
            if examples:
                picks.offer(r, s, p, np.asarray(images[k, 0]), maps[k])
    return rows, picks


def _record(
    lm: LoadedModel,
    data: HeldOut,
    *,
    method: str,
    split: str,
    threshold: float,
    counts: dict,
    table: pd.DataFrame,
    notes: list[str],
    summary: dict,
) -> dict:
    """What ``localization.json`` holds: the protocol, counts, scores and published ones."""
    cache = data.prepared.cache
    return {
        "checkpoint": str(lm.checkpoint),
        "model": lm.model.cxr_config.name,  # type: ignore[union-attr]
        "method": method,
        "split": split,
        "protocol": data.protocol,
        "split_file": str(data.split_path),
        "box_fold": data.box_fold,
        "prepared": str(data.prepared.root),
        "space": f"cache pixels ({cache.size} x {cache.size}, the prepared folder's crop and "
        "resize; NIH's 1024-space boxes mapped with ImageCache.map_boxes)",
        "box_from_map": {
            "threshold": threshold,
            "of": "the map's maximum",
            "region": "largest 8-connected component",
            "rule": "accuracy = share of (image, finding) pairs with value > T",
        },
        "iobb_thresholds": list(IOBB_THRESHOLDS),
        "iou_thresholds": list(IOU_THRESHOLDS),
        "counts": {
            **counts,
            "pairs_scored": int(len(table)),
            "images_scored": int(table["image_id"].nunique()),
        },
        "notes": notes,
        **summary,
        "published": {
            "source": SOURCE,
            "iobb": {str(k): v for k, v in WANG_2017_IOBB.items()},
            "iou": {str(k): v for k, v in WANG_2017_IOU.items()},
            "protocol_differences": list(PROTOCOL_DIFFERENCES),
        },
        "files": [
            "localization.json",
            "accuracy.csv",
            "pointing.csv",
            "summary.md",
            "localization.png",
            "details/pairs.csv",
            "examples/",
        ],
    }


@writes_into_run("cxrkit localize")
def localize_checkpoint(
    checkpoint,
    *,
    split: str = "test",
    method: str = "gradcam",
    out: str | Path | None = None,
    prepared: str | Path | None = None,
    threshold: float = WANG_THRESHOLD,
    batch_size: int = 16,
    examples: int = 28,
    limit: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> dict:
    """Score ``method``'s maps against the boxes of ``split``; write tables to ``out``.

    ``method``: one of :data:`~cxrkit.explain.saliency.METHODS`, or ``"attention"`` for a
    model's own attention maps (``gaussian_attention``).

    Returns the summary written to ``localization.json`` (see the module docstring) plus
    ``out``, the folder written.
    ``limit``: score only the first ``limit`` box images (sorted by name), for a quick look;
    recorded in the output. ``examples``: overlays written to ``examples/`` at most (best
    and worst IoBB of each finding, :class:`ExamplePicks`; 28 covers the 14 findings).
    """
    if method not in (*METHODS, "attention"):
        raise ValueError(f"method must be one of {METHODS} or 'attention', got {method!r}")
    lm = (
        checkpoint
        if isinstance(checkpoint, LoadedModel)
        else load(checkpoint, device=device, precision=precision)
    )
    if method == "attention" and not hasattr(lm.model, "attention_maps"):
        raise ValueError(
            f"method 'attention' needs a model with its own attention maps "
            f"(gaussian_attention); {lm.model.cxr_config.name} has none"  # type: ignore[union-attr]
        )
    data = load_held_out(lm, prepared)
    boxes, counts, notes = boxed_pairs(lm, data, split)
    if limit is not None:
        keep = sorted(boxes["image_id"].unique())[:limit]
        boxes = boxes[boxes["image_id"].isin(keep)].reset_index(drop=True)
        notes.append(f"limit={limit}: only the first {len(keep)} box images (by name) scored")
    out = Path(out) if out else RunFolder.of(lm.checkpoint).localize
    make_folder(out / "details")
    pairs = (
        boxes.groupby(["image_id", "finding"], sort=True)
        .apply(
            lambda t: [(r.x, r.y, r.x + r.w, r.y + r.h) for r in t.itertuples()],
            include_groups=False,
        )
        .rename("truth")
        .reset_index()
    )
    (out / "examples").mkdir(exist_ok=True)
    rows, picks = _score_pairs(
        lm,
        data,
        pairs,
        method=method,
        threshold=threshold,
        batch_size=batch_size,
        examples=examples,
        progress=progress,
    )
    picks.write(out / "examples", limit=examples)
    table = pd.DataFrame(rows)
    summary = summarise(table)
    published = {"iobb": WANG_2017_IOBB, "iou": WANG_2017_IOU}
    write_csv(table, out / "details" / "pairs.csv")
    write_csv(comparison_table(summary, published), out / "accuracy.csv")
    write_csv(pointing_table(summary), out / "pointing.csv")
    record = _record(
        lm,
        data,
        method=method,
        split=split,
        threshold=threshold,
        counts=counts,
        table=table,
        notes=notes,
        summary=summary,
    )
    write_json(record, out / "localization.json")
    write_text(summary_markdown(record), out / "summary.md")
    plot_localization(record, out / "localization.png")
    log.info(
        "localization written to %s (%d pairs on %d images)",
        out,
        len(table),
        record["counts"]["images_scored"],
    )
    return {**record, "out": str(out)}


class ExamplePicks:
    """The telling examples, kept while the pairs are scored: per finding the pair with the
    highest IoBB and the one with the lowest (ties: the more probable). Holds two maps per
    finding, not all of them."""

    def __init__(self):
        self.best: dict[str, tuple] = {}
        self.worst: dict[str, tuple] = {}

    def offer(
        self, pair, score: dict, probability: float, image: np.ndarray, saliency: np.ndarray
    ) -> None:
        item = (score["iobb"], probability, pair, score, image, saliency)
        b = self.best.get(pair.finding)
        if b is None or (item[0], item[1]) > (b[0], b[1]):
            self.best[pair.finding] = item
        w = self.worst.get(pair.finding)
        if w is None or (item[0], -item[1]) < (w[0], -w[1]):
            self.worst[pair.finding] = item

    def write(self, folder: Path, *, limit: int) -> None:
        """Overlays of the picks, best then worst of each finding, at most ``limit``."""
        chosen = [
            (kind, item)
            for f in sorted(self.best)
            for kind, item in (("best", self.best[f]), ("worst", self.worst[f]))
        ]
        seen = set()
        for kind, (iobb, p, pair, s, img, saliency) in chosen[:limit]:
            if kind == "worst" and id(pair) in seen:
                continue  # one pair only: it is both
            seen.add(id(pair))
            pred = (
                None if s["empty_map"] else (s["pred_x0"], s["pred_y0"], s["pred_x1"], s["pred_y1"])
            )
            rgb = draw_boxes(
                overlay(img, saliency, label=f"{pair.finding} {p:.2f} IoBB {iobb:.2f}"),
                pair.truth,
                pred,
            )
            write_png(rgb, folder / f"{pair.finding}__{kind}__{Path(pair.image_id).stem}.png")


def summary_markdown(r: dict) -> str:
    """A short markdown table: per finding, accuracies, pointing game and chance."""
    c = r["counts"]
    lines = [
        f"# Localisation: {r['model']}, {r['method']}, split {r['split']} ({r['protocol']})",
        "",
        f"{c['pairs_scored']} (image, finding) pairs on {c['images_scored']} box images; "
        f"IoU/IoBB in {r['space']}; box = largest component above "
        f"{r['box_from_map']['threshold']:.3f} of the map's maximum.",
        "",
        "| finding | pairs | IoBB>0.1 | IoBB>0.5 | IoU>0.1 | IoU>0.5 | pointing | chance "
        "| p | Wang IoBB>0.1 | Wang IoU>0.1 |",
        "|---|" + "---:|" * 10,
    ]
    wang_b, wang_u = r["published"]["iobb"]["0.1"], r["published"]["iou"]["0.1"]
    for f, s in [*r["per_finding"].items(), ("all", r["overall"])]:
        a, u = s["iobb_accuracy"], s["iou_accuracy"]
        wb, wu = wang_b.get(f), wang_u.get(f)
        lines.append(
            f"| {f} | {s['pairs']} | {a['0.1']:.3f} | {a['0.5']:.3f} | {u['0.1']:.3f} "
            f"| {u['0.5']:.3f} | {s['pointing_rate']:.3f} | {s['pointing_chance']:.3f} "
            f"| {s['pointing_p_value']:.2g} | {'' if wb is None else f'{wb:.3f}'} "
            f"| {'' if wu is None else f'{wu:.3f}'} |"
        )
    lines += [
        "",
        *[f"- note: {n}" for n in r["notes"]],
        f"- published: {r['published']['source']}",
        *[f"- protocol difference: {d}" for d in r["published"]["protocol_differences"]],
    ]
    return "\n".join(lines) + "\n"


def plot_localization(r: dict, path: Path) -> None:
    """Per finding: accuracy at T=0.1 (ours, whole image, Wang) and pointing vs chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["per_finding"])
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for ax, measure, title in (
        (axes[0], "iobb", "accuracy, IoBB > 0.1"),
        (axes[1], "iou", "accuracy, IoU > 0.1"),
    ):
        ours = [r["per_finding"][f][f"{measure}_accuracy"]["0.1"] for f in names]
        full = [r["per_finding"][f][f"full_image_{measure}_accuracy"]["0.1"] for f in names]
        wang = [r["published"][measure]["0.1"].get(f, np.nan) for f in names]
        ax.bar(x - 0.27, ours, 0.27, label=f"ours ({r['method']})")
        ax.bar(x, full, 0.27, label="whole-image box")
        ax.bar(x + 0.27, wang, 0.27, label="Wang et al. 2017")
        ax.set_title(title)
    ax = axes[2]
    ax.bar(x - 0.2, [r["per_finding"][f]["pointing_rate"] for f in names], 0.4, label="hit rate")
    ax.bar(
        x + 0.2,
        [r["per_finding"][f]["pointing_chance"] for f in names],
        0.4,
        label="chance (box share of image)",
    )
    ax.set_title("pointing game")
    for ax in axes:
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{r['model']}, {r['method']}: {r['counts']['pairs_scored']} pairs, split "
        f"{r['split']} ({r['protocol']})"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


__all__ = ["boxed_pairs", "localize_checkpoint"]
