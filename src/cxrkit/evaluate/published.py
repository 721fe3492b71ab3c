"""Published per-finding test AUROCs on NIH ChestX-ray, and whether a run may stand beside them.

A number from a paper is only comparable to ours when it was measured on the same test
images with the same labels. Three published rows are kept here, each with the split it
used (values copied from the papers; page and table named in ``reference``):

``wang2017_cxr14``  Wang et al., "ChestX-ray8 ...", arXiv:1705.02315v5, appendix B,
                    Table 17, ChestX-ray14 column: ResNet-50 on the 14 findings, "using
                    published data split" (NIH's ``test_list.txt``). The same appendix
                    also describes a random 70/10/20 patient shuffle; the table caption
                    says the published split, which is what we record.
``wang2017_cvpr``   the same paper's CVPR 2017 results (Table "AUCs of ROC curves for
                    multi-label classification in different DCNN model setting",
                    ResNet-50 row): 8 findings on *ChestX-ray8* (108,948 images, labels
                    mined before the 2017 re-release), a random 70/10/20 shuffle. Never
                    comparable to a ChestX-ray14 evaluation: other labels, other split.
``chexnet2017``     Rajpurkar et al., "CheXNet", arXiv:1711.05225, Table 1 (DenseNet-121):
                    its own random patient split of ChestX-ray14 (70/10/20), not
                    published. Comparable in protocol only to a random patient split,
                    and even then on a different draw of test patients.

:func:`published_rows` returns one row per (source, finding) with ``comparable`` worked
out from *this* run's data and split; phantom (synthetic) data is never comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Images in NIH's official ``test_list.txt`` (the 2017 release).
OFFICIAL_TEST_IMAGES = 25_596
#: Rows of the full NIH label file (every published form).
NIH_LABEL_ROWS = 112_120


@dataclass(frozen=True)
class PublishedSource:
    """One paper's per-finding test AUROCs and how its test set was chosen."""

    key: str
    source: str  #: short citation shown in tables
    reference: str  #: where in the paper the numbers are
    dataset: str  #: "ChestX-ray14" or "ChestX-ray8" (older labels)
    protocol: str  #: "official" or "random" (patient-level 70/10/20)
    split: str  #: the test set in words
    auroc: dict[str, float]


WANG_2017_CXR14 = PublishedSource(
    key="wang2017_cxr14",
    source="Wang et al. 2017 (ResNet-50, ChestX-ray14)",
    reference="arXiv:1705.02315v5, appendix B, Table 17 (ChestX-ray14 column)",
    dataset="ChestX-ray14",
    protocol="official",
    split="NIH's official test list (test_list.txt, 25,596 images)",
    auroc={
        "Atelectasis": 0.7003,
        "Cardiomegaly": 0.8100,
        "Effusion": 0.7585,
        "Infiltration": 0.6614,
        "Mass": 0.6933,
        "Nodule": 0.6687,
        "Pneumonia": 0.6580,
        "Pneumothorax": 0.7993,
        "Consolidation": 0.7032,
        "Edema": 0.8052,
        "Emphysema": 0.8330,
        "Fibrosis": 0.7859,
        "Pleural_Thickening": 0.6835,
        "Hernia": 0.8717,
    },
)

WANG_2017_CVPR = PublishedSource(
    key="wang2017_cvpr",
    source="Wang et al. 2017 (ResNet-50, ChestX-ray8, CVPR)",
    reference="CVPR 2017, table of AUCs per DCNN setting, ResNet-50 (W-CEL) row",
    dataset="ChestX-ray8",
    protocol="random",
    split="random 70/10/20 shuffle of ChestX-ray8 (108,948 images, older labels)",
    auroc={
        "Atelectasis": 0.7069,
        "Cardiomegaly": 0.8141,
        "Effusion": 0.7362,
        "Infiltration": 0.6128,
        "Mass": 0.5609,
        "Nodule": 0.7164,
        "Pneumonia": 0.6333,
        "Pneumothorax": 0.7891,
    },
)

CHEXNET_2017 = PublishedSource(
    key="chexnet2017",
    source="CheXNet (Rajpurkar et al. 2017, DenseNet-121)",
    reference="arXiv:1711.05225, Table 1",
    dataset="ChestX-ray14",
    protocol="random",
    split="own random patient split 70/10/20 (test patients not published)",
    auroc={
        "Atelectasis": 0.8094,
        "Cardiomegaly": 0.9248,
        "Effusion": 0.8638,
        "Infiltration": 0.7345,
        "Mass": 0.8676,
        "Nodule": 0.7802,
        "Pneumonia": 0.7680,
        "Pneumothorax": 0.8887,
        "Consolidation": 0.7901,
        "Edema": 0.8878,
        "Emphysema": 0.9371,
        "Fibrosis": 0.8047,
        "Pleural_Thickening": 0.8062,
        "Hernia": 0.9164,
    },
)

SOURCES: tuple[PublishedSource, ...] = (WANG_2017_CXR14, CHEXNET_2017, WANG_2017_CVPR)


@dataclass(frozen=True)
class RunProtocol:
    """What a comparison needs to know about the evaluated run.

    ``data``: "nih" (the full NIH label file), "phantom" (synthetic) or "other";
    ``protocol``: the split file's protocol ("official", "random" or "custom");
    ``split``: the evaluated split name; ``n_images``: images evaluated;
    ``box_fold``: share of box patients the run moved from test into train (0 = none).
    """

    data: str
    protocol: str
    split: str
    n_images: int
    box_fold: float = 0.0


def _why_not(src: PublishedSource, run: RunProtocol) -> str | None:
    """None when ``run`` may be set beside ``src``; else the reason, in one sentence."""
    if run.data == "phantom":
        return "this run used phantom (synthetic) images: its AUROC says nothing about real X-rays"
    if run.data != "nih":
        return "this run's labels are not the full NIH label file, so its test set differs"
    if src.dataset != "ChestX-ray14":
        return (
            f"{src.source} used {src.dataset}, an earlier label set (8 findings, labels "
            "mined before the 2017 re-release) and a random split"
        )
    if run.split != "test":
        return f"this run was evaluated on its {run.split!r} split, not a test set"
    if src.protocol == "official":
        if run.protocol != "official":
            return f"this run's split protocol is {run.protocol!r}; the paper used NIH's official test list"
        if run.box_fold > 0:
            return (
                "this run moved part of the official test images (box fold) into "
                "training, so its test set is a subset of the official one"
            )
        if run.n_images != OFFICIAL_TEST_IMAGES:
            return (
                f"this run evaluated {run.n_images:,} of the official "
                f"{OFFICIAL_TEST_IMAGES:,} test images, not the whole list"
            )
        return None
    if run.protocol != "random":
        return (
            f"the paper used its own random patient split (not published); this run's "
            f"protocol is {run.protocol!r}"
        )
    return None


def _note(src: PublishedSource, run: RunProtocol, reason: str | None) -> str:
    if reason is not None:
        return f"not comparable: {reason}."
    if src.protocol == "official":
        return (
            f"same test images and protocol; a different model and preprocessing ({src.reference})."
        )
    return (
        "same protocol (random patient split), but a different random draw of test "
        "patients: differences of a few hundredths are within split-to-split variation."
    )


def published_rows(findings, run: RunProtocol) -> list[dict]:
    """One row per (source, finding) for the findings this run predicts."""
    rows = []
    for src in SOURCES:
        reason = _why_not(src, run)
        note = _note(src, run, reason)
        for f in findings:
            if f in src.auroc:
                rows.append(
                    {
                        "finding": f,
                        "source": src.source,
                        "auroc": src.auroc[f],
                        "split": src.split,
                        "protocol": src.protocol,
                        "comparable": reason is None,
                        "note": note,
                    }
                )
    return rows


__all__ = [
    "CHEXNET_2017",
    "NIH_LABEL_ROWS",
    "OFFICIAL_TEST_IMAGES",
    "SOURCES",
    "WANG_2017_CVPR",
    "WANG_2017_CXR14",
    "PublishedSource",
    "RunProtocol",
    "published_rows",
]
