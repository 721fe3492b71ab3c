"""Losses (masking, weights) and the shared AUROC functions on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrkit.engine.losses import MaskedBCE, MaskedFocal, make_loss, positive_weights
from cxrkit.metrics import auprc_per_finding, auroc_per_finding, mean_defined


def test_auroc_hand_computed():
    y = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], dtype=float)
    s = np.array([[0.1, 0.9], [0.4, 0.2], [0.35, 0.3], [0.8, 0.6]])
    # finding 0: pairs (pos, neg): (0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1, 0.8>0.4) -> 3/4
    # finding 1: positives 0.9, 0.3; negatives 0.2, 0.6 -> (1 + 1 + 1 + 0) / 4
    assert auroc_per_finding(y, s).tolist() == [0.75, 0.75]


def test_auroc_undefined_is_nan_not_half():
    y = np.array([[0, 1], [0, 0], [0, 1]], dtype=float)
    s = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8]])
    a = auroc_per_finding(y, s)
    assert math.isnan(a[0]) and a[1] == 1.0
    assert mean_defined(a) == 1.0
    assert math.isnan(mean_defined(np.array([np.nan])))


def test_auroc_ignores_unknown_labels():
    y = np.array([[1], [0], [np.nan], [0]])
    s = np.array([[0.9], [0.1], [0.0], [0.2]])
    assert auroc_per_finding(y, s)[0] == 1.0


def test_auprc():
    y = np.array([[1], [0], [1], [0]], dtype=float)
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    # ranks: pos@1 (P=1), neg@2, pos@3 (P=2/3) -> AP = (1 + 2/3) / 2
    assert auprc_per_finding(y, s)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_positive_weights():
    y = np.array([[1, 0, np.nan], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    w = positive_weights(y, max_weight=50)
    assert w.tolist() == pytest.approx([3.0, 50.0, 2.0])


def test_masked_bce_matches_torch_on_known_entries():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    got = MaskedBCE()(logits, labels)
    known = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.5, 0.3]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert got == pytest.approx(float(known))
    assert torch.isfinite(MaskedBCE()(logits, torch.full_like(labels, float("nan"))))


def test_pos_weight_scales_positive_terms():
    logits = torch.zeros(1, 1)
    plain = MaskedBCE()(logits, torch.ones(1, 1))
    weighted = MaskedBCE(torch.tensor([3.0]))(logits, torch.ones(1, 1))
    assert weighted == pytest.approx(3 * float(plain))


def test_focal_downweights_easy_examples():
    labels = torch.tensor([[1.0], [1.0]])
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])
    bce, focal = make_loss("bce"), MaskedFocal(gamma=2.0)
    assert focal(easy, labels[:1]) / bce(easy, labels[:1]) < focal(hard, labels[:1]) / bce(
        hard, labels[:1]
    )
    assert MaskedFocal(gamma=0.0)(hard, labels[:1]) == pytest.approx(float(bce(hard, labels[:1])))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
