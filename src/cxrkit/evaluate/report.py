"""One self-contained HTML report per evaluation, plus ``summary.md``.

:func:`write_report` reads what ``cxrkit evaluate`` wrote into its folder
(``metrics.json``, ``predictions_<split>.csv``) and the run folder's records
(``metrics.csv``, ``run.json``, ``config.yaml``), draws the figures
(:mod:`cxrkit.evaluate.plots`) into ``figures/``, and writes ``report.html`` with every
image embedded as base64, so the file opens offline and can be mailed on its own.

Sections, in order: the headline numbers and the honesty notes; what a threshold means;
per-finding AUROC/AUPRC beside published results (each marked comparable or not, and
why); figures; threshold metrics; calibration; subgroups; training; explanations and
the localisation benchmark when ``cxrkit explain`` / ``cxrkit localize`` have written
them into the run folder; configuration and provenance.
The tables come from :mod:`cxrkit.evaluate.report_tables`.

Hand-written HTML (no template engine) because the page is one static document with a
dozen tables; every value from a file goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cxrkit.artefacts import EvaluationFolder, RunFolder, read_csv, read_json, write_text
from cxrkit.evaluate.plots import FIGURES, write_figures
from cxrkit.evaluate.report_tables import (
    _num,
    auroc_table,
    calibration_table,
    data_summary,
    published_notes,
    subgroup_table,
    threshold_table,
)
from cxrkit.evaluate.text import format_ci

RESEARCH_USE = (
    "Research use only. cxrkit is not a medical device and its outputs are not a diagnosis."
)
NOT_FITTED = (
    "No thresholds were fitted: they must be chosen on predictions for other images "
    "(pass --fit-on VAL.csv, the model's predictions for its validation images), "
    "never on the scored ones, which would flatter them. Calibration below is of "
    "the probabilities as given."
)
THRESHOLD_SENTENCE = (
    "A threshold turns a probability into a yes/no call: the finding is "
    "reported present when the model's probability is at or above it. "
    "The thresholds here were chosen on the {fit} split (Youden's J "
    "maximises sensitivity + specificity; max-F1 maximises the F1 score) "
    "and then applied unchanged to the {split} split, so the rates below "
    "are what to expect on new images, not a best case."
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.sub{color:#5b6573;margin:0 0 14px}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px;margin:10px 0}
.ruo{background:#fdecec;border-left:4px solid #d33;padding:8px 12px;margin:10px 0;font-weight:600}
.kpi{display:flex;gap:14px;flex-wrap:wrap;margin:12px 0}.kpi div{background:#f0f3f7;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px}table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border:1px solid #dde1e7;padding:3px 7px;text-align:right;white-space:nowrap}
table{display:block;overflow-x:auto;max-width:100%}th{background:#f0f3f7}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:6px 0}
figure{margin:14px 0}figcaption{color:#5b6573;font-size:12.5px}.gallery{display:flex;flex-wrap:wrap;gap:10px}
.gallery figure{width:270px;margin:0}pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
"""


# -- small helpers ------------------------------------------------------------------------
def _esc(x) -> str:
    return html.escape(str(x))


def _table(df: pd.DataFrame) -> str:
    df = df.copy()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.Int64Dtype):  # counts: blank where not applicable
            df[col] = [("—" if pd.isna(v) else f"{int(v):,}") for v in df[col]]
    return df.to_html(
        index=False, escape=True, na_rep="—", border=0, float_format=lambda v: f"{v:.3f}"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _read_json(path: Path) -> dict:
    return read_json(path, missing={})


# -- optional sections written by other stages --------------------------------------------
def explanation_examples(run_dir: Path, limit: int = 8) -> list[tuple[Path, str]]:
    """A handful of saliency overlays from ``cxrkit explain`` (``<run>/explain/``), if any."""
    folder = RunFolder(run_dir).explain
    if not folder.is_dir():
        return []
    index = folder / "index.csv"
    if index.exists():
        table = read_csv(index)
        col = next((c for c in ("overlay", "overlay_png", "png", "path") if c in table), None)
        if col is not None:
            out = []
            for r in table.head(limit).to_dict("records"):
                path = Path(r[col])
                path = path if path.is_absolute() else folder / path
                parts = [str(r[k]) for k in ("image_id", "finding") if k in r]
                if "probability" in r:
                    parts.append(f"p = {float(r['probability']):.2f}")
                parts += [str(r["method"])] if "method" in r else []
                caption = " · ".join(parts)
                if path.exists():
                    out.append((path, caption))
            return out
    return [(p, p.stem) for p in sorted(folder.rglob("*.png"))[:limit]]


def localization_section(run_dir: Path) -> str:
    """The localisation benchmark from ``cxrkit localize`` (``<run>/localize/``), if any.

    The figure, the pointing game, accuracy per finding at each T(IoBB) and T(IoU) with
    Wang et al.'s values beside, the notes and protocol differences; the long tables stay
    in the folder (and under a fold-out).
    """
    folder = RunFolder(run_dir).localize
    if not folder.is_dir():
        return ""
    record = _read_json(folder / "localization.json")
    parts = []
    if record:
        o = record.get("overall") or {}
        parts.append(
            f"<p>{_esc(record.get('model'))}, {_esc(record.get('method'))} maps, "
            f"{_esc(record.get('split'))} split ({_esc(record.get('protocol'))}): "
            f"{o.get('pairs', 0)} (image, finding) pairs on {o.get('images', 0)} box "
            f"images; boxes in {_esc(record.get('space', 'cache pixels'))}.</p>"
        )
    for png in sorted(folder.glob("*.png"))[:2]:
        parts.append(f"<figure>{_img(png, png.stem)}</figure>")
    pointing = folder / "pointing.csv"
    if pointing.exists():
        parts.append(
            "<h3>Pointing game (hit: the map's maximum inside a box; chance: the "
            "boxes' share of the image)</h3>" + _table(read_csv(pointing))
        )
    accuracy = folder / "accuracy.csv"
    if accuracy.exists():
        acc = read_csv(accuracy)
        if {"finding", "measure", "threshold", "accuracy"} <= set(acc.columns):
            acc["column"] = (
                acc["measure"].str.upper().str.replace("IOBB", "IoBB").str.replace("IOU", "IoU")
                + " > "
                + acc["threshold"].map("{:g}".format)
            )
            order = list(dict.fromkeys(acc["column"]))
            findings = list(dict.fromkeys(acc["finding"]))
            for value, title in (
                ("accuracy", "This model: accuracy (share of pairs over T)"),
                ("wang2017_accuracy", "Wang et al. 2017, as published"),
                ("full_image_accuracy", "Baseline: a box covering the whole image"),
            ):
                if value in acc:
                    wide = acc.pivot(index="finding", columns="column", values=value)
                    wide = wide.reindex(index=findings, columns=order).reset_index()
                    wide.columns.name = None
                    parts.append(f"<h3>{_esc(title)}</h3>{_table(wide)}")
    notes = list(record.get("notes") or [])
    notes += list((record.get("published") or {}).get("protocol_differences") or [])
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    summary = folder / "summary.md"
    if summary.exists():
        parts.append(
            f"<details><summary>summary.md</summary><pre>{_esc(summary.read_text())}"
            "</pre></details>"
        )
    if not record:  # an older or foreign folder: show whatever tables it holds
        for csv in sorted(folder.glob("*.csv")):
            parts.append(f"<h3>{_esc(csv.stem)}</h3>{_table(read_csv(csv))}")
    return "".join(parts)


def ood_html(metrics: dict) -> str:
    """The out-of-distribution section: images flagged, AUROC with and without them."""
    ood = metrics.get("ood")
    if not ood:
        return ""
    rec = ood["record"]
    n, k = ood["n_images"], ood["n_flagged"]
    head = (
        f"<h2>Out-of-distribution images</h2><p>{k:,} of {n:,} evaluated images "
        f"({_num(ood['fraction_flagged'] * 100 if n else None, 1)} %) are flagged as "
        "unlike the training images (OOD score &gt; 1; the record's method: "
        f"{_esc(rec['method'])}; {_num(rec['val']['flag_rate'] * 100, 1)} % of "
        f"validation images flagged). Mean AUROC with them "
        f"<b>{_num(ood['mean_auroc_all'])}</b>, without them "
        f"<b>{_num(ood['mean_auroc_without_flagged'])}</b>.</p>"
    )
    table = pd.DataFrame(
        {
            "finding": list(ood["auroc_all"]),
            "AUROC, all images": [_num(v) for v in ood["auroc_all"].values()],
            "AUROC, without flagged": [_num(v) for v in ood["auroc_without_flagged"].values()],
        }
    )
    shown = ", ".join(ood["flagged_images"][:20])
    more = f" (+{k - 20} more)" if k > 20 else ""
    return (
        head + f"<details><summary>Per finding; flagged images</summary>{_table(table)}"
        f"<p>{_esc(shown)}{_esc(more)}</p></details>"
    )


# -- the report ---------------------------------------------------------------------------
def title(metrics: dict) -> str:
    """What was scored, in a few words: "cnn4 on the test split", "predictions.csv on ..."."""
    if (metrics.get("source") or {}).get("kind") == "predictions":
        rows = metrics["protocol"]["rows"]
        return (
            f"{metrics['model']} on NIH's official test list"
            if rows == "official-test"
            else f"{metrics['model']} on all rows as given"
        )
    return f"{metrics['model']} on the {metrics['split']} split"


def _kpis(metrics: dict, run: dict) -> str:
    cov = (metrics.get("protocol") or {}).get("coverage") or {}
    items = [
        ("mean AUROC [95% CI]", format_ci(metrics["mean_auroc"])),
        ("images / patients", f"{metrics['n_images']:,} / {metrics['n_patients']:,}"),
    ]
    if cov.get("scored_official_test") is not None:
        items.append(
            (
                "official test images scored",
                f"{cov['scored_official_test']:,} of {cov['official_test_images']:,}",
            )
        )
    if (metrics.get("source") or {}).get("kind") == "predictions":
        items.append(("rows", metrics["protocol"]["rows"]))
    else:
        items += [
            ("split", f"{metrics['split']} ({metrics['split_protocol']})"),
            ("model", f"{metrics['model']}, epoch {metrics['epoch']}"),
            ("test-time augmentation", metrics["tta"]),
        ]
    if run.get("images_per_s"):
        items.append(("training speed", f"{run['images_per_s']:.0f} img/s"))
    return (
        '<div class="kpi">'
        + "".join(f"<div>{_esc(k)}<b>{_esc(v)}</b></div>" for k, v in items)
        + "</div>"
    )


def _data_section(metrics: dict, scored: dict[str, pd.DataFrame] | None) -> list[str]:
    """The Data section: the evaluated split beside training (none without a data summary)."""
    s: list[str] = []
    data = data_summary(metrics, scored)
    if data is not None:
        s.append(
            "<h2>Data</h2><p>"
            + (
                "The scored images (test) and those thresholds were "
                "fitted on (val), as NIH's label file describes them. "
                if scored
                else "The run's split of the prepared images. "
            )
            + "Differences between "
            "the evaluated split and training (view mix, images per patient, prevalence) "
            "change what an AUROC means; NIH's official test list, for one, holds sicker, "
            "more often AP-imaged patients with more follow-up images.</p>"
        )
        s.append(_table(data[0]))
        s.append(
            "<details><summary>Prevalence per finding and split</summary>"
            f"{_table(data[1])}</details>"
        )
    return s


def _threshold_section(metrics: dict) -> list[str]:
    """Decision thresholds: each method's, chosen on the fit split, applied to the evaluated one."""
    s: list[str] = []
    split, fit = metrics["split"], metrics["thresholds"]["chosen_on"]
    s.append("<h2>Decision thresholds</h2>")
    if fit is None:
        s.append(f"<p>{_esc(NOT_FITTED)}</p>")
    else:
        s.append(f"<p>{_esc(THRESHOLD_SENTENCE.format(fit=fit, split=split))}</p>")
    written = metrics["thresholds"].get("written")
    titles = [("youden", "Youden's J"), ("max_f1", "max-F1")] if fit else []
    if written:
        titles.append(
            (
                "used",
                f"Written to thresholds.json ({written['method']}"
                + (
                    f"; set by hand: {', '.join(written['overrides'])}"
                    if written["overrides"]
                    else ""
                )
                + ")",
            )
        )
    for method, heading in titles:
        s.append(
            f"<h3>{_esc(heading)} thresholds (chosen on {_esc(fit)}), applied to {_esc(split)}</h3>"
        )
        s.append(_table(threshold_table(metrics, method)))
    if written:
        s.append(
            f"<p>Positive {_esc(fit)} images each threshold was fitted on: "
            + ", ".join(f"{_esc(f)} {n}" for f, n in written["positives"].items())
            + f". Fewer than {written['min_positives']} (warned): "
            + (_esc(", ".join(written["few_positives"])) or "none")
            + ".</p>"
        )
    return s


def _training_section(run: dict) -> list[str]:
    """The run's training summary (run.json)."""
    s: list[str] = []
    if run:
        keys = (
            "status",
            "epochs_run",
            "best_val_mean_auroc",
            "seconds",
            "images_per_s",
            "train_images",
            "val_images",
            "parameters",
            "trainable_parameters",
            "precision",
            "device",
            "world_size",
        )
        s.append("<h2>Training</h2>")
        s.append(_table(pd.DataFrame([{k: run.get(k) for k in keys if k in run}])))
    return s


def _explanations_section(run_dir: Path | None) -> list[str]:
    """Saliency overlays that ``cxrkit explain`` left in the run folder."""
    s: list[str] = []
    examples = explanation_examples(run_dir) if run_dir else []
    if examples:
        s.append(
            "<h2>Explanations</h2><p>Saliency overlays from <code>cxrkit explain</code>: "
            "where the model's evidence for a finding lies. A map is a check on what the "
            "model looks at, not a localisation claim; the benchmark below scores it.</p>"
        )
        s.append(
            "<div class='gallery'>"
            + "".join(
                f"<figure>{_img(p, c)}<figcaption>{_esc(c)}</figcaption></figure>"
                for p, c in examples
            )
            + "</div>"
        )
    return s


def _provenance_section(metrics: dict, run: dict, config: str) -> list[str]:
    """What made the numbers: inputs, checksums, versions and the run's config.yaml."""
    s: list[str] = []
    s.append("<h2>Configuration and provenance</h2>")
    prov = {
        k: metrics[k]
        for k in (
            "source",
            "checkpoint",
            "checkpoint_sha256",
            "prepared",
            "release",
            "split_file",
            "split_protocol",
            "protocol",
            "bootstrap",
        )
        if k in metrics
    }
    prov["training versions"] = run.get("versions")
    prov["evaluation versions"] = metrics.get("versions")
    prov["evaluated"] = metrics.get("created")
    s.append(f"<pre>{_esc(json.dumps(prov, indent=2))}</pre>")
    if config:
        s.append(f"<h3>config.yaml</h3><pre>{_esc(config)}</pre>")
    return s


def render_html(
    metrics: dict,
    run_dir: Path | None,
    figures: dict[str, Path],
    extra_sections: tuple[str, ...] = (),
    scored: dict[str, pd.DataFrame] | None = None,
) -> str:
    layout = RunFolder(run_dir) if run_dir else None
    run = _read_json(layout.run_json) if layout else {}
    config = layout.config.read_text() if layout and layout.config.exists() else ""
    fit = metrics["thresholds"]["chosen_on"]
    what = (metrics.get("source") or {}).get("file") or metrics.get("checkpoint")
    s = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cxrkit evaluation: {_esc(title(metrics))}</title>"
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_esc(title(metrics))}</h1>",
        f"<p class='sub'>cxrkit evaluation report · {_esc(what)} · "
        f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        f"<div class='ruo'>{_esc(RESEARCH_USE)}</div>",
        _kpis(metrics, run),
    ]
    s += [f"<div class='warn'>{_esc(n)}</div>" for n in metrics["notes"]]
    s += _data_section(metrics, scored)
    s.append(ood_html(metrics))
    s.append("<h2>Per-finding AUROC and AUPRC</h2>")
    s.append(_table(auroc_table(metrics)))
    s.append(
        "<p>Published values (* = not comparable with this run):</p><ul>"
        + "".join(f"<li>{_esc(n)}</li>" for n in published_notes(metrics))
        + "</ul>"
    )
    s.append("<h2>Figures</h2>")
    for name, path in figures.items():
        s.append(
            f"<figure>{_img(path, FIGURES.get(name, name))}<figcaption>"
            f"{_esc(FIGURES.get(name, name))}</figcaption></figure>"
        )
    s += _threshold_section(metrics)
    cal = metrics["calibration"]
    t = cal.get("temperature")
    s.append(
        "<h2>Calibration</h2><p>Brier score and expected calibration error "
        f"({cal['bins']} bins) per finding; mean Brier {_num(cal['mean_brier'])}, mean ECE "
        f"{_num(cal['mean_ece'])}. "
        + (
            f"Temperature scaling: T = {t:.3f}, fitted on {_esc(fit)}."
            if t
            else "No temperature fitted."
        )
        + "</p>"
    )
    s.append(_table(calibration_table(metrics)))
    s.append(
        "<h2>Subgroups</h2><p>† fewer than 10 positive patients (N pt): an anecdote, not "
        "an estimate; below 5 no interval is given. AUROC [95% CI] (positives/images) per "
        "finding within each "
        "sex, age band and view. A model that learned a shortcut (say, AP view means "
        "sick) shows large gaps between groups.</p>"
    )
    s.append(_table(subgroup_table(metrics)))
    s += _training_section(run)
    s += _explanations_section(run_dir)
    loc = localization_section(run_dir) if run_dir else ""
    if loc:
        s.append("<h2>Localisation against NIH's boxes</h2>" + loc)
    from cxrkit.audit.report import audit_html  # late: the audit imports this module

    s.append(audit_html(run_dir) if run_dir else "")  # a predictions file has no run
    s += [x for x in extra_sections if x]  # e.g. against radiologists, error gallery
    s += _provenance_section(metrics, run, config)
    s.append("</main></body></html>")
    return "\n".join(x for x in s if x)


def render_summary(metrics: dict) -> str:
    """The Markdown summary: headline, notes, and the per-finding AUROC table."""
    lines = [
        f"# {title(metrics)}",
        "",
        f"Mean AUROC {format_ci(metrics['mean_auroc'])} over {metrics['mean_auroc']['defined']} "
        f"findings; {metrics['n_images']:,} images of {metrics['n_patients']:,} patients"
        + (f"; TTA {metrics['tta']}." if metrics.get("tta") else "."),
        "",
        f"_{RESEARCH_USE}_",
        "",
    ]
    lines += [f"- {n}" for n in metrics["notes"]]
    ood = metrics.get("ood")
    if ood:
        lines += [
            f"- Out of distribution: {ood['n_flagged']:,} of {ood['n_images']:,} images "
            f"flagged; mean AUROC {_num(ood['mean_auroc_all'])} with them, "
            f"{_num(ood['mean_auroc_without_flagged'])} without."
        ]
    lines += ["", "| finding | positives | AUROC [95% CI] | AUPRC [95% CI] |", "|---|---:|---|---|"]
    for f in metrics["findings"]:
        a = metrics["auroc"][f]
        lines.append(
            f"| {f} | {a['positives']} | {format_ci(a)} | {format_ci(metrics['auprc'][f])} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, run_dir: str | Path | None = None) -> Path:
    """Figures, ``report.html`` and ``summary.md`` for the evaluation in ``out``.

    ``run_dir``: the run folder (training records, explanations); default: the folder of
    the evaluated checkpoint, none for a predictions file. Returns the path of
    ``report.html``.
    """
    folder = EvaluationFolder(Path(out))
    metrics = folder.read_metrics()
    run_dir = (
        Path(run_dir) if run_dir else (Path(metrics["run_dir"]) if metrics.get("run_dir") else None)
    )
    pred = folder.read_predictions(metrics["split"])
    history = None
    if run_dir is not None and RunFolder(run_dir).history.exists():
        history = read_csv(RunFolder(run_dir).history)
    figures = write_figures(folder.figures, metrics, pred, history)
    from cxrkit.evaluate.radiologists_report import (
        gallery_html,
        radiologists_html,
        radiologists_markdown,
    )

    extra = (radiologists_html(folder.root), gallery_html(folder.root))
    scored = None
    if (metrics.get("source") or {}).get("kind") == "predictions":  # no prepared folder
        scored = {
            name: folder.read_predictions(name)
            for name in ("test", "val")
            if folder.predictions(name).exists()
        }
    write_text(render_html(metrics, run_dir, figures, extra, scored), folder.report)
    write_text(render_summary(metrics) + radiologists_markdown(folder.root), folder.summary)
    return folder.report


__all__ = [
    "RESEARCH_USE",
    "auroc_table",
    "render_html",
    "render_summary",
    "subgroup_table",
    "threshold_table",
    "write_report",
]
