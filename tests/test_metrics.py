"""audio_dcls.metrics against a hand-computed case and against sklearn."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from audio_dcls.metrics import AUC_CLIP, d_prime, per_class_average_precision, per_class_roc_auc, tagging_metrics

SQRT2 = math.sqrt(2.0)
PPF_0875 = 1.1503493803760079  # Φ⁻¹(0.875)
PPF_075 = 0.6744897501960817  # Φ⁻¹(0.75)
PPF_TOP = 4.753424308822899  # Φ⁻¹(1 − 1e-6)


def hand_case():
    # class 0: ranking pos, neg, pos, neg -> AP = (1 + 2/3) / 2 = 5/6, AUC = 3/4
    # class 1: the single positive ranked first -> AP = 1, AUC = 1
    # class 2: no positive -> no AP, no AUC
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.5], [0.7, 0.3, 0.5], [0.1, 0.4, 0.5]])
    return targets, scores


def test_hand_computed_case():
    m = tagging_metrics(*hand_case())
    assert m.ap[0] == pytest.approx(5 / 6)
    assert m.ap[1] == pytest.approx(1.0)
    assert np.isnan(m.ap[2]) and np.isnan(m.auc[2])
    assert m.auc[0] == pytest.approx(0.75) and m.auc[1] == pytest.approx(1.0)
    assert m.classes_scored_ap == 2 and m.classes_scored_auc == 2 and m.num_classes == 3
    assert m.mAP == pytest.approx(11 / 12)  # the class without positives is left out, not averaged in as 0
    assert m.mAUC == pytest.approx(0.875)
    assert m.d_prime == pytest.approx(SQRT2 * PPF_0875, rel=1e-9)
    assert m.mean_class_d_prime == pytest.approx(SQRT2 * (PPF_075 + PPF_TOP) / 2, rel=1e-9)
    assert list(m.positives) == [2, 1, 0]
    s = m.summary()
    assert s["classes_without_positives"] == 1 and s["num_clips"] == 4
    assert "2/3 classes" in m.describe()


def test_against_sklearn_with_ties_and_rare_classes():
    rng = np.random.default_rng(0)
    n, c = 300, 12
    targets = (rng.random((n, c)) < np.linspace(0.01, 0.5, c)).astype(np.uint8)
    targets[:, 3] = 0  # no positives
    targets[:, 5] = 1  # no negatives: AP defined (1.0), AUC not
    scores = np.round(rng.random((n, c)) * 0.5 + targets * 0.3, 2)  # coarse scores: many ties
    ap = per_class_average_precision(targets, scores)
    auc = per_class_roc_auc(targets, scores)
    for k in range(c):
        if targets[:, k].any():
            assert ap[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
        else:
            assert np.isnan(ap[k])
        if 0 < targets[:, k].sum() < n:
            assert auc[k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]), abs=1e-12)
        else:
            assert np.isnan(auc[k])
    m = tagging_metrics(targets, scores)
    assert m.classes_scored_ap == c - 1 and m.classes_scored_auc == c - 2
    assert m.mAP == pytest.approx(np.nanmean(ap))


def test_d_prime_convention():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    assert d_prime(0.875) == pytest.approx(SQRT2 * PPF_0875)
    assert d_prime(1.0) == pytest.approx(d_prime(1.0 - AUC_CLIP))  # finite for a perfect class
    assert np.isfinite(d_prime(0.0)) and d_prime(0.0) < -6


def test_bad_input():
    t, s = hand_case()
    with pytest.raises(ValueError, match="same|both"):
        tagging_metrics(t, s[:, :2])
    s2 = s.copy()
    s2[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tagging_metrics(t, s2)
    with pytest.raises(ValueError, match="no class has a positive"):
        tagging_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
