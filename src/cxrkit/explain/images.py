"""``cxrkit explain``: overlays and raw maps for images or a whole split, with an index.

Output layout (``out``; the CLI's default is ``<run folder>/explain``, where the
evaluation HTML report looks), read by people and by that report:

``index.csv``              one row per (image, finding) explained, in order: ``image``
                           (the path, or the image id for a split), ``image_id``,
                           ``finding``, ``rank`` (1 = the image's most probable finding
                           when findings were chosen by probability), ``probability``,
                           ``method``, ``overlay`` and ``map`` (paths relative to ``out``),
                           and ``attention_overlay`` (models with their own attention
                           maps, e.g. ``gaussian_attention``; else empty)
``index.json``             what made it: checkpoint, model, method, findings rule, the
                           column meanings above, and the map units
``overlays/<stem>__<finding>.png``   heatmap over the cache-stage X-ray, "<finding> <p>"
                                     written on it (RGB, the cache image's size)
``maps/<stem>__<finding>.npy``       float32 ``(S, S)`` map in [0, 1], cache pixels
``attention/<stem>__<finding>.png``  the model's own attention (gaussian_attention only)

A report embeds a few examples by reading ``index.csv`` and showing the ``overlay``
column of its first rows. ``<stem>`` is the file name without its suffix (for a split,
the image id's); a name seen twice gets ``_2``, ``_3``, ... appended. Methods other than
Grad-CAM add ``__<method>`` to the file names.

Explaining again into the same folder keeps what is there: ``index.csv`` is merged, rows
of the same (image, finding, method) are replaced by the new ones and the rest kept (an
image keeps its stem from one run to the next).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrkit.artefacts import RunFolder, make_folder, write_csv, write_json, writes_into_run
from cxrkit.data.decoder import DecodeLimits, Decoder, default_workers
from cxrkit.data.metadata import metadata_vector
from cxrkit.explain.overlay import overlay, write_map, write_png
from cxrkit.explain.saliency import METHODS, attention_maps, finding_targets, saliency_maps
from cxrkit.inference.core import LoadedModel, load
from cxrkit.inference.heldout import load_held_out
from cxrkit.metrics import sigmoid

log = logging.getLogger(__name__)

INDEX_COLUMNS = (
    "image",
    "image_id",
    "finding",
    "rank",
    "probability",
    "method",
    "overlay",
    "map",
    "attention_overlay",
)


def _chosen(lm: LoadedModel, probs: np.ndarray, findings, top_k: int) -> list[list[int]]:
    """Per image, the finding indices to explain (given, or the ``top_k`` most probable)."""
    if findings is not None:
        names = [findings] if isinstance(findings, (str, int)) else list(findings)
        idx = finding_targets(lm.findings, names, len(names))
        return [idx for _ in range(len(probs))]
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return [list(np.argsort(-p, kind="stable")[:top_k]) for p in probs]


def _write_explanation(
    out: Path, stem: str, img: np.ndarray, hm, attention, *, label: str, finding: str
) -> tuple[Path, Path, str]:
    """Write one image's explanation of one finding under ``out``: the overlay PNG, the map
    (``.npy``) and, for a model with its own attention maps, the attention overlay; returns
    their paths relative to ``out`` (the attention one "" when there is none)."""
    rel_png = Path("overlays") / f"{stem}.png"
    rel_npy = Path("maps") / f"{stem}.npy"
    write_png(overlay(img, hm, label=label), out / rel_png)
    write_map(hm, out / rel_npy)
    rel_att = ""
    if attention is not None:
        (out / "attention").mkdir(exist_ok=True)
        rel_att = str(Path("attention") / f"{stem}.png")
        write_png(overlay(img, attention, label=f"{finding} attention"), out / rel_att)
    return rel_png, rel_npy, rel_att


def explain_cached(
    lm: LoadedModel,
    images,
    names: Sequence[str],
    out: str | Path | None = None,
    *,
    sources: Sequence[str] | None = None,
    method: str = "gradcam",
    findings=None,
    top_k: int = 3,
    meta=None,
    batch_size: int = 8,
    progress: bool = True,
    errors: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Explain cache-stage ``uint8`` images ``(N, 1, S, S)`` named ``names``; write ``out``.

    ``images``: a tensor, or a function ``(start, stop) -> tensor`` so that a whole split
    is read from the cache one batch at a time. ``findings``: a name (or names) to explain
    on every image; None: each image's ``top_k`` most probable findings. ``out``: default
    the run folder's ``explain`` (where the evaluation report looks). Returns the index
    table (also ``index.csv``), with the folder written in ``index.attrs["out"]``.
    ``errors``: inputs that could not be read (input -> reason), written to ``errors.csv``
    and ``index.json`` and kept in ``index.attrs["errors"]``.
    """
    get = images if callable(images) else (lambda a, b: images[a:b])
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(images) and len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    out = Path(out) if out else RunFolder.of(lm.checkpoint).explain
    for sub in ("overlays", "maps"):
        make_folder(out / sub)
    sources = list(sources) if sources is not None else list(names)
    previous = _previous_index(out)
    stems = _unique_stems(names, taken=_stems_of(previous), sources=sources)
    tag = "" if method == "gradcam" else f"__{method}"
    rows, size = [], None
    batches = range(0, len(names), batch_size)
    for start in tqdm(
        batches, desc=f"explain {method}", unit="batch", disable=not progress, dynamic_ncols=True
    ):
        x = get(start, start + batch_size)
        size = int(x.shape[-1])
        m = None if meta is None else np.asarray(meta)[start : start + batch_size]
        probs = sigmoid(lm.logits_from_cached(x, m))
        chosen = _chosen(lm, probs, findings, top_k)
        # one map per (image, finding): repeat each image once per chosen finding
        which = [(i, k) for i, ks in enumerate(chosen) for k in ks]
        rep = torch.as_tensor([i for i, _ in which], dtype=torch.long)
        mm = None if m is None else m[rep.numpy()]
        maps = saliency_maps(
            lm, x[rep], [k for _, k in which], method=method, meta=mm, batch_size=batch_size
        )
        attn = attention_maps(lm, x)
        for (i, k), hm in zip(which, maps, strict=True):
            g = start + i
            f = lm.findings[k]
            rel_png, rel_npy, rel_att = _write_explanation(
                out,
                f"{stems[g]}__{f}{tag}",
                np.asarray(x[i, 0]),
                hm,
                None if attn is None else attn[i, k],
                label=f"{f} {probs[i, k]:.2f}",
                finding=f,
            )
            rows.append(
                {
                    "image": str(sources[g]),
                    "image_id": names[g],
                    "finding": f,
                    "rank": chosen[i].index(k) + 1,
                    "probability": float(probs[i, k]),
                    "method": method,
                    "overlay": str(rel_png),
                    "map": str(rel_npy),
                    "attention_overlay": rel_att,
                }
            )
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    merged = merge_index(previous, index)
    write_csv(merged, out / "index.csv")
    write_json(
        {
            "checkpoint": str(lm.checkpoint),
            "model": lm.model.cxr_config.name,  # type: ignore[union-attr]
            "method": method,
            "findings": "given: "
            + ", ".join(map(str, findings if isinstance(findings, (list, tuple)) else [findings]))
            if findings is not None
            else f"each image's {top_k} most probable",
            "images": len(names),
            "rows": len(index),
            "rows_in_index": len(merged),
            "columns": {
                "image": "the input path (or image id for a split)",
                "rank": "1 = most probable of the chosen findings on that image",
                "probability": "the model's sigmoid output for the finding",
                "overlay": "PNG path relative to this folder",
                "map": ".npy path, float32 (S, S) in [0, 1], cache-stage pixels",
                "attention_overlay": "the model's own attention map (gaussian_attention), else empty",
            },
            "map_units": "per-map scaled to [0, 1]; cache-stage image pixels (see "
            "cxrkit.explain.saliency)",
            "cache_size": size,
            "errors": dict(errors or {}),
        },
        out / "index.json",
    )
    if errors:
        write_csv(
            pd.DataFrame({"image": list(errors), "error": list(errors.values())}),
            out / "errors.csv",
        )
    index.attrs["out"] = str(out)
    index.attrs["errors"] = dict(errors or {})
    return index


def _previous_index(out: Path) -> pd.DataFrame | None:
    """The ``index.csv`` an earlier explain wrote into ``out`` (None if none or unreadable:
    then it is replaced, and a warning says so)."""
    path = out / "index.csv"
    if not path.exists():
        return None
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as e:
        log.warning("%s could not be read (%s): it is replaced, not merged", path, e)
        return None
    if not {"image", "finding", "method", "overlay"} <= set(old.columns):
        log.warning(
            "%s is not an explain index (columns %s): it is replaced, not merged",
            path,
            ", ".join(old.columns[:6]),
        )
        return None
    return old


def merge_index(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Earlier rows, less those the new run redid (same image, finding and method), then
    the new rows."""
    if old is None or old.empty:
        return new
    key = ["image", "finding", "method"]
    redone = pd.MultiIndex.from_frame(new[key].astype(str))
    keep = ~pd.MultiIndex.from_frame(old[key].astype(str)).isin(redone)
    kept = old.loc[keep].reindex(columns=list(INDEX_COLUMNS))
    return pd.concat([kept, new], ignore_index=True) if len(kept) else new


def _stems_of(index: pd.DataFrame | None) -> dict[str, str]:
    """image -> the file stem an earlier run gave it (from its overlay's name)."""
    if index is None:
        return {}
    return {
        str(img): Path(str(ov)).name.split("__")[0]
        for img, ov in zip(index["image"], index["overlay"], strict=True)
    }


def _unique_stems(
    names: Sequence[str],
    *,
    taken: dict[str, str] | None = None,
    sources: Sequence[str] | None = None,
) -> list[str]:
    """One file stem per name: its own (``scan`` for ``a/scan.png``), ``_2``, ``_3``...
    for the next ones; an image an earlier run named (``taken``: source -> stem) keeps
    its stem, and no other image gets one of those."""
    taken = taken or {}
    used = set(taken.values())
    seen: dict[str, int] = {}
    stems = []
    for n, src in zip(names, sources if sources is not None else names, strict=True):
        if str(src) in taken:
            stems.append(taken[str(src)])
            continue
        s = Path(str(n)).stem or "image"
        while True:
            seen[s] = seen.get(s, 0) + 1
            stem = s if seen[s] == 1 else f"{s}_{seen[s]}"
            if stem not in used:
                break
        used.add(stem)
        stems.append(stem)
    return stems


@writes_into_run("cxrkit explain")
def explain_images(
    checkpoint,
    images: Sequence,
    out: str | Path | None = None,
    *,
    method: str = "gradcam",
    findings=None,
    top_k: int = 3,
    batch_size: int = 8,
    device: str | None = None,
    precision: str | None = None,
    progress: bool = True,
    limits: DecodeLimits | None = None,
) -> pd.DataFrame:
    """Image files (PNG, JPEG, DICOM) -> overlays, maps and ``index.csv`` in ``out``.

    Each image goes through the checkpoint's own cache stage first, so overlays show
    what the model saw (before its resize/crop). Files are decoded in worker processes
    under ``limits`` (:class:`cxrkit.data.decoder.Decoder`); one that cannot be read (or
    is missing) is logged, listed in ``errors.csv``/``index.json`` and
    ``index.attrs["errors"]``, and every other image is still explained.
    """
    lm = (
        checkpoint
        if isinstance(checkpoint, LoadedModel)
        else load(checkpoint, device=device, precision=precision)
    )
    paths = [Path(p) for p in images]
    with Decoder(default_workers(len(paths)), limits=limits) as decoder:
        decoded = list(decoder.imap(paths, cache=lm.preprocessing.cache))
    good = [(p, d.image) for p, d in zip(paths, decoded, strict=True) if d.image is not None]
    errors = {str(p): d.error or "" for p, d in zip(paths, decoded, strict=True) if d.image is None}
    for p, why in errors.items():
        log.warning("explain: %s: %s", p, why)
    s = lm.preprocessing.cache.size
    x = torch.from_numpy(
        np.stack([im for _, im in good])[:, None] if good else np.zeros((0, 1, s, s), np.uint8)
    )
    return explain_cached(
        lm,
        x,
        [p.name for p, _ in good],
        out,
        sources=[str(p) for p, _ in good],
        method=method,
        findings=findings,
        top_k=top_k,
        batch_size=batch_size,
        progress=progress,
        errors=errors,
    )


@writes_into_run("cxrkit explain")
def explain_split(
    checkpoint,
    out: str | Path | None = None,
    *,
    split: str = "test",
    prepared: str | Path | None = None,
    method: str = "gradcam",
    findings=None,
    top_k: int = 3,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every cached image of the checkpoint's ``split`` (or the first ``limit``, by name)."""
    lm = (
        checkpoint
        if isinstance(checkpoint, LoadedModel)
        else load(checkpoint, device=device, precision=precision)
    )
    data = load_held_out(lm, prepared)
    ids = sorted(
        set(data.split.loc[data.split["split"] == split, "image_id"]) & set(data.prepared.cache.ids)
    )
    if not ids:
        raise ValueError(f"split {split!r} of {data.split_path} has no cached images")
    if limit is not None:
        ids = ids[:limit]
    cache = data.prepared.cache
    rows = cache.rows(ids)

    def read(a: int, b: int) -> torch.Tensor:  # one batch at a time from the memmap
        return torch.from_numpy(np.asarray(cache.images[rows[a:b]]))[:, None]

    meta = None
    if lm.metadata:
        meta = metadata_vector(data.prepared.labels.set_index("image_id").loc[ids].reset_index())
    return explain_cached(
        lm,
        read,
        ids,
        out,
        method=method,
        findings=findings,
        top_k=top_k,
        meta=meta,
        batch_size=batch_size,
        progress=progress,
    )


__all__ = ["INDEX_COLUMNS", "explain_cached", "explain_images", "explain_split"]
