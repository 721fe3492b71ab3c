"""The audit in words and figures: ``summary.md``, the PNGs, and the evaluation report's
section (:func:`audit_html`, called by :func:`cxrkit.evaluate.report.render_html` when
``RUN/audit/`` exists)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrkit.artefacts import RunFolder, atomic_path
from cxrkit.audit.core import FORMAT
from cxrkit.evaluate.report import _esc, _img, _num
from cxrkit.evaluate.text import format_ci as _ci  # the one "value [CI]" formatter


def _flag_lines(record: dict) -> list[str]:
    flags = record["flags"]
    if not flags:
        return [
            "No flags: no measure crossed its threshold (see `thresholds` in audit.json) "
            f"for a finding with at least {record['min_positives']} positives."
        ]
    return [f"- **{f['finding']}**, `{f['measure']}`: {f['action']}" for f in flags]


def _new_measure_lines(record: dict) -> list[str]:
    """The label-free region influence and the occlusion sensitivity (``cxrkit-audit/2``);
    a line saying they are missing for an older record."""
    if "region_influence" not in record:
        return [
            "",
            f"(This audit was written as `{record.get('format', 'cxrkit-audit/1')}`: it has "
            "no region influence or occlusion sensitivity; run `cxrkit audit` again for them.)",
        ]
    lines = [
        "",
        "## Region influence (label-free, every image of the split)",
        "",
        "Evidence: mean drop of the finding's logit when one side is blanked, in standard "
        "deviations (SD) of the logit over the split. Shift: mean absolute change in logits; "
        "the outside's share of the two shifts against its share of the image area.",
        "",
        "| finding | images | evidence outside (SD) | evidence in chest (SD) | "
        "shift, outside blanked | shift, chest blanked | outside's share | outside area |",
        "|---|---:|---|---|---|---|---|---:|",
    ]
    for f, r in record["region_influence"].items():
        lines.append(
            f"| {f} | {r['images']} | {_ci(r['evidence_outside'])} | "
            f"{_ci(r['evidence_chest'])} | {_ci(r['mean_shift_outside_blanked'])} | "
            f"{_ci(r['mean_shift_chest_blanked'])} | {_ci(r['outside_share'])} | "
            f"{_num(r['outside_area'])} |"
        )
    m = record["occlusion_method"]
    lines += [
        "",
        f"## Occlusion sensitivity (positives; {m['window']} px patch, stride {m['stride']})",
        "",
        "Largest logit drop one patch causes, outside and inside the chest, in standard "
        "deviations of the finding's logit over the split; share of the positive map in "
        "the chest against the chest's area.",
        "",
        "| finding | images | empty maps | peak outside (SD) | peak inside (SD) | "
        "energy in chest | area of chest |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for f, s in record["occlusion"].items():
        lines.append(
            f"| {f} | {s['images']} | {s['empty_maps']} | {_ci(s['peak_outside'])} | "
            f"{_ci(s['peak_inside'])} | {_ci(s['energy_inside'])} | "
            f"{_ci(s['area_inside'])} |"
        )
    return lines


def summary_markdown(record: dict) -> str:
    """The audit as Markdown: flags first, then one table per measure."""
    c = record["chest_region"]
    lines = [
        f"# Shortcut audit: {record['model']} on the {record['split']} split",
        "",
        f"{record['n_images']:,} images of {record['n_patients']:,} patients; 95% "
        f"patient-bootstrap intervals ({record['bootstrap']['replicates']} replicates).",
        f"Chest region: {c['source']}; it covers {c['area_share']:.0%} of the image on "
        f"average. Hidden parts are filled with the training mean (grey "
        f"{c['blank_value']}).",
        "",
        "## Flags",
        "",
        *_flag_lines(record),
        "",
        "## Region reliance (AUROC by occlusion)",
        "",
        "| finding | pos | as is | chest only | outside only | chest only - as is |",
        "|---|---:|---|---|---|---|",
    ]
    for f, r in record["region_reliance"].items():
        lines.append(
            f"| {f} | {r['positives']} | {_ci(r['auroc'])} | "
            f"{_ci(r['auroc_chest_only'])} | {_ci(r['auroc_outside_only'])} | "
            f"{_ci(r['chest_only_gain'])} |"
        )
    lines += _new_measure_lines(record)
    lines += [
        "",
        f"## Where the saliency falls ({record['saliency_method']['method']}, positives)",
        "",
        "| finding | images | energy in chest | area of chest | energy - area |",
        "|---|---:|---|---|---|",
    ]
    for f, s in record["saliency"].items():
        lines.append(
            f"| {f} | {s['images']} | {_ci(s['energy_inside'])} | "
            f"{_ci(s['area_inside'])} | {_ci(s['excess'])} |"
        )
    lines += [
        "",
        "## What the pooled features know (logistic probes, patient-grouped CV)",
        "",
        "| variable | classes | images | AUROC (chance 0.5) | balanced accuracy | chance |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, p in record["probes"].items():
        lines.append(
            f"| {name} | {', '.join(p['classes'])} | {p['images']} | {_ci(p['auroc'])} "
            f"| {_num(p.get('balanced_accuracy'))} | "
            f"{_num(p.get('chance_balanced_accuracy'))} |"
        )
    lines += [
        "",
        "## AUROC within one view",
        "",
        "| finding | pooled | AP only (pos) | PA only (pos) |",
        "|---|---|---|---|",
    ]
    for f, v in record["view_strata"].items():
        lines.append(
            f"| {f} | {_ci(v['pooled'])} | {_ci(v['AP'])} ({v['AP']['positives']}) | "
            f"{_ci(v['PA'])} ({v['PA']['positives']}) |"
        )
    size = record["size"]
    lines += [
        "",
        "## Detection by box area (boxed images of the split)",
        "",
        f"Threshold: {record['size_threshold_source']}. {size['pairs']} (image, finding) pairs.",
    ]
    if size.get("quartiles"):
        lines += [
            "",
            "| quartile | box area (share of image) | pairs | detected |",
            "|---:|---|---:|---|",
        ]
        for q in size["quartiles"]:
            lines.append(
                f"| {q['quartile']} | {_num(q['area_from'])}-{_num(q['area_to'])} | "
                f"{q['pairs']} | {_ci(q)} |"
            )
        lines.append(f"\nLargest minus smallest quartile: {_ci(size['largest_minus_smallest'])}.")
    elif size.get("note"):
        lines.append(f"\n{size['note']}.")
    lines += ["", "## Thresholds", ""]
    lines += [f"- `{k}` = {v['value']}: {v['why']}" for k, v in record["thresholds"].items()]
    return "\n".join(lines) + "\n"


def _bars(ax, names, series: dict, errors: dict | None = None):
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for k, (label, values) in enumerate(series.items()):
        v = np.array([np.nan if a is None else a for a in values], float)
        yerr = None
        if errors and label in errors:
            lo = np.array([np.nan if a is None else a for a in errors[label][0]], float)
            hi = np.array([np.nan if a is None else a for a in errors[label][1]], float)
            yerr = np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(0)
        ax.bar(x + (k - (len(series) - 1) / 2) * width, v, width, yerr=yerr, label=label, capsize=2)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.legend(fontsize=8)


def _series(block: dict, names: list[str], keys: dict) -> tuple[dict, dict]:
    """Bar values and their (lo, hi) for ``keys`` (label -> measure) of ``block[name]``."""
    values = {k: [block[f][v]["value"] for f in names] for k, v in keys.items()}
    errors = {
        k: ([block[f][v]["lo"] for f in names], [block[f][v]["hi"] for f in names])
        for k, v in keys.items()
    }
    return values, errors


def _save(fig, path: Path, plt) -> str:
    """Write ``fig`` to ``path`` atomically, close it, return the file's name."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path.name


def _shortcut_figure(record: dict, out: Path, plt) -> str:
    """``shortcut.png``: the logit's shift with either side blanked, and the occlusion
    peaks outside and inside the chest (the two measures that flag on a random token)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    r = record["region_influence"]
    _bars(
        a,
        list(r),
        *_series(
            r,
            list(r),
            {"outside blanked": "evidence_outside", "chest blanked": "evidence_chest"},
        ),
    )
    line = record["thresholds"].get("outside_evidence", {}).get("value")
    if line is not None:
        a.axhline(line, color="grey", lw=0.8, ls="--")
    a.set_ylabel("mean drop of the logit (SD of the logit)")
    a.set_title("Region influence (every image, no labels)", fontsize=9)
    o = record.get("occlusion") or {}
    if o:
        _bars(
            b,
            list(o),
            *_series(o, list(o), {"peak outside": "peak_outside", "peak inside": "peak_inside"}),
        )
    else:
        b.text(0.5, 0.5, f"no finding with {record['min_positives']}+ positives", ha="center")
    line = record["thresholds"].get("occlusion_peak", {}).get("value")
    if line is not None:
        b.axhline(line, color="grey", lw=0.8, ls="--")
    b.set_ylabel("largest logit drop from one patch (SD of the logit)")
    b.set_title("Occlusion sensitivity (positives)", fontsize=9)
    return _save(fig, out / "shortcut.png", plt)


def _mean_maps_figure(maps: dict, region: np.ndarray, out: Path, plt) -> str:
    """``occlusion_maps.png``: per finding, the mean positive occlusion map over the
    audited positives, with the mean chest region's outline."""
    fig, axes = plt.subplots(
        1,
        len(maps),
        figsize=(max(2.6 * len(maps), 4.5), 2.8),
        constrained_layout=True,
        squeeze=False,
    )
    for ax, (f, m) in zip(axes[0], maps.items(), strict=True):
        ax.imshow(m, cmap="magma")
        ax.contour(region, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f, fontsize=8)
        ax.axis("off")
    fig.suptitle("Mean occlusion map on the positives (cyan: chest)", fontsize=9)
    return _save(fig, out / "occlusion_maps.png", plt)


def write_figures(
    record: dict, out: Path, mean_maps: dict | None = None, region: np.ndarray | None = None
) -> list[str]:
    """``region_reliance.png``, ``saliency.png``, ``shortcut.png`` (and ``size.png`` with
    boxes; ``occlusion_maps.png`` given the mean occlusion maps per finding and the mean
    chest region)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    r = record["region_reliance"]
    names = list(r)
    keys = {
        "as is": "auroc",
        "chest only": "auroc_chest_only",
        "outside only": "auroc_outside_only",
    }
    fig, ax = plt.subplots(figsize=(12, 4), constrained_layout=True)
    _bars(
        ax,
        names,
        {k: [r[f][v]["value"] for f in names] for k, v in keys.items()},
        {
            k: ([r[f][v]["lo"] for f in names], [r[f][v]["hi"] for f in names])
            for k, v in keys.items()
        },
    )
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC")
    ax.set_title(
        f"Region reliance by occlusion ({record['split']}); chest region: "
        f"{record['chest_region']['source'][:70]}",
        fontsize=9,
    )
    with atomic_path(out / "region_reliance.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    written.append("region_reliance.png")

    s = record["saliency"]
    if s:
        names = list(s)
        fig, ax = plt.subplots(figsize=(12, 4), constrained_layout=True)
        keys = {"Grad-CAM energy in chest": "energy_inside", "chest area share": "area_inside"}
        _bars(
            ax,
            names,
            {k: [s[f][v]["value"] for f in names] for k, v in keys.items()},
            {
                k: ([s[f][v]["lo"] for f in names], [s[f][v]["hi"] for f in names])
                for k, v in keys.items()
            },
        )
        ax.set_ylim(0, 1)
        ax.set_title("Where the saliency falls (positives of each finding)", fontsize=9)
        with atomic_path(out / "saliency.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append("saliency.png")

    if record.get("region_influence"):
        written.append(_shortcut_figure(record, out, plt))
    if mean_maps and region is not None:
        written.append(_mean_maps_figure(mean_maps, region, out, plt))

    q = record["size"].get("quartiles") or []
    if q:
        fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
        v = np.array([a["value"] for a in q], float)
        lo = np.array([np.nan if a["lo"] is None else a["lo"] for a in q], float)
        hi = np.array([np.nan if a["hi"] is None else a["hi"] for a in q], float)
        ax.errorbar(
            [a["quartile"] for a in q],
            v,
            yerr=np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(0),
            marker="o",
            capsize=3,
        )
        ax.set_xticks([1, 2, 3, 4], ["smallest", "2", "3", "largest"])
        ax.set_ylim(0, 1)
        ax.set_xlabel("box area quartile")
        ax.set_ylabel("detected at the validation threshold")
        with atomic_path(out / "size.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append("size.png")
    return written


def audit_html(run_dir: str | Path) -> str:
    """The evaluation report's audit section ("" when the run has no audit): per audited
    split, the chest region used, the flags and the figures; summary.md folded out."""
    folder = RunFolder(Path(run_dir)).audit
    if not folder.is_dir():
        return ""
    parts = []
    for split_dir in sorted(p for p in folder.iterdir() if (p / "audit.json").exists()):
        record = json.loads((split_dir / "audit.json").read_text())
        c = record["chest_region"]
        parts.append(
            f"<h3>{_esc(split_dir.name)} split</h3><p>Chest region: "
            f"{_esc(c['source'])} ({c['area_share']:.0%} of the image); hidden "
            f"parts filled with the training mean.</p>"
        )
        if record.get("format") != FORMAT:
            parts.append(
                f"<p>This audit was written as <code>{_esc(record.get('format', '?'))}"
                f"</code> by an older cxrkit (now <code>{FORMAT}</code>): it lacks the "
                "occlusion and region-influence measures; run <code>cxrkit audit</code> "
                "again for them.</p>"
            )
        flags = record.get("flags") or []
        if flags:
            parts.append(
                "<ul>"
                + "".join(
                    f"<li><b>{_esc(f['finding'])}</b> ({_esc(f['measure'])}): "
                    f"{_esc(f['action'])}</li>"
                    for f in flags
                )
                + "</ul>"
            )
        else:
            parts.append("<p>No flags.</p>")
        for name in record.get("files", []):
            png = split_dir / name
            if name.endswith(".png") and png.exists():
                parts.append(f"<figure>{_img(png, name)}</figure>")
        summary = split_dir / "summary.md"
        if summary.exists():
            parts.append(
                f"<details><summary>summary.md</summary><pre>"
                f"{_esc(summary.read_text())}</pre></details>"
            )
    if not parts:
        return ""
    return (
        "<h2>Shortcut audit</h2><p>From <code>cxrkit audit</code>: does the model read the "
        "chest? Occlusion, saliency, feature probes, per-view AUROC and size.</p>" + "".join(parts)
    )


__all__ = ["audit_html", "summary_markdown", "write_figures"]
