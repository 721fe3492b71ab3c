"""``cxrkit import``: a published model file -> an ordinary cxrkit run folder, checked.

:func:`import_model` reads the file in its format (:mod:`cxrkit.importer.formats`), builds
the ``published`` registry model (:mod:`cxrkit.models.published`: the backbone, the
authors' per-channel normalisation, the output as a logit), loads the weights with the
outputs mapped to cxrkit's findings by name, and writes ``best.pt`` (model, model config,
preprocessing contract, config, split), ``config.yaml`` and ``run.json`` (the manifest:
source file, sha256, format, output mapping, checks). Every later command reads that
folder as it reads a trained run.

Two checks run on import, and both go into ``run.json``:

* **parity**: the run, loaded by :func:`cxrkit.load` (fp32) and fed by cxrkit's tensor
  stage, against the file run as its authors run it (:mod:`cxrkit.importer.reference`), on
  a few images given at the authors' resize side; within :data:`PARITY_TOLERANCE`.
* **untrained?**: the run's probabilities on the labelled images at hand; a mean AUROC
  within :data:`UNTRAINED_MARGIN` of 0.5, or outputs that do not vary, warn
  (:class:`UntrainedModelWarning`): the silent failure of a file that loaded wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import (
    PreparedFolder,
    RunFolder,
    file_sha256,
    versions,
    write_json,
)
from cxrkit.data.images import preprocess
from cxrkit.data.preprocessing import Preprocessing, PreprocessSettings, chexnet_resize
from cxrkit.engine.checkpoint import save_checkpoint
from cxrkit.importer.formats import (
    ImportFormatError,
    Published,
    mismatch_message,
    read_published,
)
from cxrkit.labels import FINDINGS
from cxrkit.metrics import auroc_per_finding

#: Largest |probability difference| allowed between cxrkit and the authors' code.
PARITY_TOLERANCE = 1e-5
#: A mean AUROC within this of 0.5 looks untrained (or loaded wrong).
UNTRAINED_MARGIN = 0.05
#: Outputs whose spread over the images is below this are constant.
CONSTANT_STD = 1e-6
#: Default cache of an import without a prepared folder: NIH at 256 px, as released sizes
#: are shrunk by every reproduction, no CLAHE, no crop.
DEFAULT_CACHE = PreprocessSettings(size=256)


class UntrainedModelWarning(UserWarning):
    """The imported model's outputs look like an untrained (or wrongly loaded) network's."""


@dataclass
class CheckImages:
    """Images for the import's checks: names, grey ``uint8`` arrays, labels (N, 14) or None."""

    names: list[str]
    images: list[np.ndarray]
    labels: np.ndarray | None
    source: str


def check_images(
    paths: Sequence[str | Path] = (), *, labels=None, n: int = 32, nih: str | Path | None = None
) -> CheckImages:
    """The images the checks run on: ``paths`` if given, else ``n`` evenly spaced images
    of the NIH sample (``nih``, its ``images_256``) when present, else ``n`` phantoms.

    Labels: ``labels`` (a table with ``image_id`` and the 14 finding columns), or NIH's
    ``meta/Data_Entry_2017.csv`` under ``nih``; phantoms know their own.
    """
    from cxrkit.data.dicom import read_image

    files = [Path(p) for p in paths]
    source = "given files"
    if not files and nih is not None and (Path(nih) / "images_256").is_dir():
        pool = sorted((Path(nih) / "images_256").glob("*.png"))
        files = [pool[i] for i in np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)]
        source = f"NIH sample ({Path(nih) / 'images_256'})"
    if files:
        if (
            labels is None
            and nih is not None
            and (Path(nih) / "meta" / "Data_Entry_2017.csv").exists()
        ):
            from cxrkit.data.nih import read_data_entry

            labels = read_data_entry(Path(nih) / "meta" / "Data_Entry_2017.csv")[0]
        y = None
        if labels is not None:
            table = labels.set_index("image_id")
            if all(f.name in table.index for f in files):
                y = table.loc[[f.name for f in files], list(FINDINGS)].to_numpy(np.float32)
        return CheckImages([f.name for f in files], [read_image(f) for f in files], y, source)
    from cxrkit.data.phantoms import render_phantom

    rng = np.random.default_rng(0)
    names, images, y = [], [], np.zeros((n, len(FINDINGS)), np.float32)
    for i in range(n):
        shown = [f for f in FINDINGS if rng.random() < 0.3]
        img, _ = render_phantom(np.random.default_rng(100 + i), shown, size=256)
        names.append(f"phantom_{i}")
        images.append(img)
        y[i, [FINDINGS.index(f) for f in shown]] = 1
    return CheckImages(names, images, y, "phantoms")


def _published_model(path: Path, pub: Published, findings: list[str], index: dict[str, int]):
    """cxrkit's ``published`` model for ``pub``, its weights loaded (outputs in ``findings``
    order; ``index``: finding -> the file's output row); also returns the model's kwargs.
    A state that does not fit the architecture is an :class:`ImportFormatError`."""
    from cxrkit.models import create_model

    kwargs = {
        "arch": pub.arch,
        "channel_mean": list(pub.channel_mean),
        "channel_std": list(pub.channel_std),
        "output": "op_norm" if pub.op_thresholds is not None else "logit",
    }
    if pub.op_thresholds is not None:
        kwargs["op_thresholds"] = [pub.op_thresholds[index[f]] for f in findings]
    chans_policy = "replicate" if pub.in_chans == 3 else "fold"
    model = create_model(
        "published", findings=findings, in_chans=1, chans_policy=chans_policy, **kwargs
    )
    state = cxrkit_state(pub, [index[f] for f in findings])
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = mismatch_message(
        path,
        own,
        {k: tuple(v.shape) for k, v in state.items()},
        what=f"a {pub.arch} with {len(findings)} outputs ({pub.format})",
    )
    if bad:
        raise ImportFormatError(bad)
    model.load_state_dict(state, strict=True)
    return model, kwargs


def _cache_and_notes(pub: Published, prepared) -> tuple[PreprocessSettings, dict | None, list[str]]:
    """The image cache the model is fed from (the prepared folder's, else the default), the
    prepared folder's split file (None without one) and the notes the manifest carries."""
    cache = DEFAULT_CACHE
    split = None
    notes = list(pub.notes)
    if prepared is not None:
        from cxrkit.data.prepare import load_prepared

        p = load_prepared(prepared)
        cache = p.cache.settings
        split_file = PreparedFolder(prepared).split
        split = {"path": str(split_file), "sha256": file_sha256(split_file)}
        notes.append(
            "the model was trained elsewhere: cxrkit cannot verify that the "
            "prepared folder's test images were not in its training set"
        )
        if cache.size < max(pub.resize, pub.input_size):
            notes.append(
                f"the prepared cache is {cache.size} px: the model sees images "
                f"upsampled to {max(pub.resize, pub.input_size)} px"
            )
        notes.append("for out-of-distribution scores run `cxrkit ood RUN` once")
        if cache.clahe or cache.crop:
            notes.append(
                f"the prepared cache applies clahe={cache.clahe}, crop={cache.crop}; "
                "the authors' model saw neither"
            )
    else:
        notes.append(
            "imported without --prepared: evaluate, explain and localize need a "
            "run imported with one (predict, serve, export and compare do not)"
        )
    if pub.format == "chexnet-state-dict":
        notes.append(
            "CheXNet averaged the probabilities of ten crops; cxrkit's --tta "
            "tencrop averages their logits (same crops)"
        )
    return cache, split, notes


def import_model(
    path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    arch: str | None = None,
    outputs: list[str] | None = None,
    prepared: str | Path | None = None,
    images: CheckImages | Callable[[], CheckImages] | None = None,
    parity_count: int = 4,
    force: bool = False,
) -> dict:
    """Import ``path`` (format ``fmt``) as the run folder ``out``; returns the manifest
    (also in ``out/run.json``). ``images``: the check images, or a function giving them
    (called once the file has loaded; default: 8 phantoms). A folder that already holds a
    checkpoint is refused unless ``force``. Raises :class:`~cxrkit.importer.formats.ImportFormatError`
    for a file that does not fit its format; a failed parity check is recorded and
    reported (``manifest["parity"]["passed"]``), not raised."""
    from cxrkit.config import RunConfig

    path = Path(path)
    run = RunFolder(Path(out))
    if not force and (run.best.exists() or run.last.exists()):
        raise FileExistsError(
            f"{run.root} already holds a run (best.pt/last.pt); choose "
            "another --out, or --force to replace it"
        )
    pub = read_published(path, fmt, arch=arch, outputs=outputs)
    findings = pub.findings()
    mapping = pub.mapping()
    index = {r["finding"]: r["index"] for r in mapping if r["finding"]}
    model, kwargs = _published_model(path, pub, findings, index)

    cache, split, notes = _cache_and_notes(pub, prepared)
    resize = max(pub.resize, pub.input_size)
    pre = Preprocessing(
        cache=cache,
        input_size=pub.input_size,
        eval_resize=resize,
        tencrop_resize=resize if resize > pub.input_size else chexnet_resize(pub.input_size),
        mean=0.0,
        std=1.0,
        channels=1,
        hflip=pub.hflip_trained,
    )
    cfg = RunConfig.from_dict(
        {
            "data": {
                "prepared": str(prepared) if prepared is not None else "",
                "findings": findings,
                "image_size": pub.input_size,
                "eval_resize": resize,
                "augment": False,
                "hflip": bool(pub.hflip_trained),
            },
            "model": {"name": "published", "in_chans": 1, "freeze": "no-train", "kwargs": kwargs},
            "out": str(run.root),
        }
    )
    sha = file_sha256(path)
    source = {
        "path": str(path.resolve()),
        "sha256": sha,
        "bytes": path.stat().st_size,
        "format": pub.format,
        "arch": pub.arch,
        **({"wrapper": pub.extra} if pub.extra else {}),
    }
    ck = {
        "model": model.state_dict(),
        "model_config": model.cxr_config.to_dict(),
        "findings": findings,
        "preprocess": pre.to_dict(),
        "config": cfg.to_dict(),
        "versions": versions(),
        "metrics": {},
        "import": source,
    }
    if split is not None:
        ck["split"] = split
    save_checkpoint(ck, run.best)
    cfg.to_yaml(run.config)

    if callable(images):  # read only once the file has proved importable
        images = images()
    images = images if images is not None else check_images(n=8)
    parity, probs = parity_check(run.root, pub, findings, index, images, count=parity_count)
    untrained = untrained_check(probs, images.labels, findings)
    manifest = {
        "source": source,
        "outputs": mapping,
        "output": (
            f"{kwargs['output']}: "
            + (
                "the classifier's Sigmoid is dropped and its Linear kept; cxrkit's sigmoid gives "
                "the same probability"
                if pub.sigmoid_in_model
                else "torchxrayvision's operating-point rescaling as a logit; cxrkit's sigmoid gives "
                "its probability"
                if kwargs["output"] == "op_norm"
                else "the classifier returns logits; cxrkit applies the sigmoid"
            )
        ),
        "authors_preprocessing": {
            "channels": pub.in_chans,
            "mean": list(pub.channel_mean),
            "std": list(pub.channel_std),
            "resize": pub.resize,
            "crop": pub.input_size,
        },
        "parity": parity,
        "untrained_check": untrained,
        "notes": notes,
        "check_images": {"source": images.source, "n": len(images.names)},
    }
    write_json(
        {
            "status": "imported",
            "model": "published",
            "findings": findings,
            "epochs_run": 0,
            "best_val_mean_auroc": None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "split": split,
            "versions": versions(),
            "import": manifest,
        },
        run.run_json,
    )
    if untrained["warning"]:
        warnings.warn(f"{path}: {untrained['warning']}", UntrainedModelWarning, stacklevel=2)
    return manifest


def cxrkit_state(pub: Published, rows: list[int]) -> dict[str, torch.Tensor]:
    """The file's weights under cxrkit's keys: the network as ``backbone.*``, the classifier's
    rows for the mapped findings (in cxrkit's order) as ``classifier.fc.1.*``."""
    head = pub.classifier + "."
    state = {f"backbone.{k}": v for k, v in pub.authors_state.items() if not k.startswith(head)}
    for part in ("weight", "bias"):
        state[f"classifier.fc.1.{part}"] = pub.authors_state[head + part][rows].clone()
    return state


def parity_check(
    run: Path,
    pub: Published,
    findings: list[str],
    index: dict[str, int],
    images: CheckImages,
    *,
    count: int = 4,
) -> tuple[dict, np.ndarray]:
    """cxrkit's probabilities for all ``images`` and the parity record on the first
    ``count``: both sides get each image at the authors' resize side (cxrkit's cache-stage
    resize made it), so no resampler differs; cxrkit's tensor stage and model against the
    authors' transforms and network."""
    from cxrkit.importer.reference import reference_probabilities
    from cxrkit.inference import load

    side = max(pub.resize, pub.input_size)
    batch = np.stack([preprocess(im, size=side) for im in images.images])[:, None]
    lm = load(run, precision="fp32")
    probs = 1 / (1 + np.exp(-lm.logits_from_cached(batch).astype(np.float64)))
    k = min(count, len(batch))
    record = {
        "images": images.names[:k],
        "side": side,
        "tolerance": PARITY_TOLERANCE,
        "reference": _reference_name(pub),
    }
    try:
        ref = reference_probabilities(pub, list(batch[:k, 0]))
    except Exception as e:  # noqa: BLE001 (the authors' code path itself failed)
        record.update(passed=False, error=f"{type(e).__name__}: {e}"[:300])
        return record, probs
    ref = ref[:, [index[f] for f in findings]]
    diff = float(np.abs(ref.astype(np.float64) - probs[:k]).max())
    record.update(max_abs_diff_probability=diff, passed=bool(diff <= PARITY_TOLERANCE))
    return record, probs


def _reference_name(pub: Published) -> str:
    if pub.format == "torchxrayvision":
        return (
            "torchvision densenet121 with 1 input channel, sigmoid + op_norm; their "
            "preprocessing: 8 bit -> [-1024, 1024], centre crop, resize 224 (skimage)"
        )
    net = {
        "chexnet-pickled": "the unpickled torchvision DenseNet (their Sigmoid)"
        if pub.module is not None
        else "a fresh torchvision densenet121 + Sequential(Linear, Sigmoid) "
        "with the unpickled weights",
        "chexnet-state-dict": "torchvision densenet121 + Sequential(Linear, Sigmoid)",
        "torchvision": f"torchvision {pub.arch} + sigmoid",
        "timm": f"timm {pub.arch} + sigmoid",
    }
    return (
        f"{net[pub.format]}; PIL/torchvision transforms: resize {pub.resize}, centre crop "
        f"{pub.input_size}, normalise {list(pub.channel_mean)} / {list(pub.channel_std)}"
    )


def untrained_check(probs: np.ndarray, labels: np.ndarray | None, findings: list[str]) -> dict:
    """Does the model look untrained? Mean AUROC near 0.5 on the labelled images at hand, or
    constant outputs. ``probs`` ``(N, F)`` in ``findings`` order; ``labels`` ``(N, 14)``."""
    spread = probs.std(axis=0)
    constant = bool(len(probs) > 1 and (spread < CONSTANT_STD).all())
    out = {
        "n_images": len(probs),
        "constant_outputs": constant,
        "mean_auroc": None,
        "findings_scored": 0,
        "warning": None,
    }
    if labels is not None:
        y = labels[:, [FINDINGS.index(f) for f in findings]]
        auc = auroc_per_finding(y, probs)
        scored = np.isfinite(auc)
        out["findings_scored"] = int(scored.sum())
        if scored.any():
            out["mean_auroc"] = float(np.nanmean(auc))
    if constant:
        out["warning"] = (
            f"its outputs do not vary over {len(probs)} images (spread < "
            f"{CONSTANT_STD:g}): untrained, or loaded wrong?"
        )
    elif out["mean_auroc"] is not None and abs(out["mean_auroc"] - 0.5) <= UNTRAINED_MARGIN:
        out["warning"] = (
            f"mean AUROC {out['mean_auroc']:.3f} over {out['findings_scored']} "
            f"findings on {len(probs)} labelled images is within "
            f"{UNTRAINED_MARGIN} of chance: untrained, or loaded wrong?"
        )
    return out


__all__ = [
    "DEFAULT_CACHE",
    "PARITY_TOLERANCE",
    "UNTRAINED_MARGIN",
    "CheckImages",
    "UntrainedModelWarning",
    "check_images",
    "cxrkit_state",
    "import_model",
    "parity_check",
    "untrained_check",
]
