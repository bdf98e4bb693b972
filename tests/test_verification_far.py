"""Thresholds at a false-accept rate, Yale A pairs across expressions, and the card they are written
into (`ferkit eval-verification --far --write-card`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.cli import main
from ferkit.evaluation.verification import (YALE_EXPRESSIONS, calibrate_far, draw_cross_condition_pairs,
                                            threshold_at_far)
from ferkit.models.weights import Preprocessing, Weights, get_weights
from ferkit.paths import shared_data_dir
from tests.fixtures.datasets import make_lfw_tree, write_image, write_lfw_pairs
from tests.test_verification_cli import PIXELS  # registers the pixel-correlation test model


def _card(folder: Path, name: str = "pixels", threshold: float | None = None) -> Path:
    """A weights card (+ its empty state dict) of the pixel-identity model, as export-weights leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({}, folder / f"{name}.pt")
    w = Weights(name=name, architecture=PIXELS, classes=["a", "b"], file=f"{name}.pt",
                preprocessing=Preprocessing(input_size=16, grayscale=True, mean=0.5, std=0.5),
                metrics={"kept_metric": 0.5}, identity_threshold=threshold)
    w.save_card(folder / f"{name}.json")
    return folder / f"{name}.json"


def test_threshold_at_far_by_hand() -> None:
    # 10 different-identity pairs, 5 same; FAR 0.1 allows one false accept (the 0.9)
    diff = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2]
    same_scores = [0.95, 0.8, 0.7, 0.6, 0.2]
    scores = np.array(same_scores + diff)
    same = np.array([True] * 5 + [False] * 10)
    thr, far, tar = threshold_at_far(scores, same, 0.1)
    assert 0.7 < thr < 0.7 + 1e-9  # just above the second-highest different score
    assert far == pytest.approx(0.1) and tar == pytest.approx(2 / 5)  # 0.95 and 0.8; 0.7 ties -> rejected
    thr0, far0, tar0 = threshold_at_far(scores, same, 0.0)
    assert thr0 > 0.9 and far0 == 0.0 and tar0 == pytest.approx(1 / 5)
    # FAR 0.5 allows five false accepts: everything above the sixth different score (0.2)
    thr5, far5, tar5 = threshold_at_far(scores, same, 0.5)
    assert 0.2 < thr5 <= 0.2 + 1e-9 and far5 == pytest.approx(0.5) and tar5 == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="--far"):
        threshold_at_far(scores, same, 1.0)


def test_calibrate_far_calibrates_on_the_other_folds() -> None:
    rng = np.random.default_rng(0)
    n = 400
    same = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    scores = np.where(same, rng.normal(0.6, 0.15, n), rng.normal(0.2, 0.15, n))
    folds = np.r_[np.arange(n // 2) % 10, np.arange(n // 2) % 10]
    cal = calibrate_far(scores, same, folds, 0.05)
    assert cal.protocol == "10-fold" and len(cal.fold_thresholds) == 10
    for k, t in enumerate(cal.fold_thresholds):
        rest = folds != k
        assert t == threshold_at_far(scores[rest], same[rest], 0.05)[0]
        test = folds == k
        assert cal.fold_tar[k] == pytest.approx(float((scores[test & same] >= t).mean()))
        assert cal.fold_far[k] == pytest.approx(float((scores[test & ~same] >= t).mean()))
    assert cal.threshold == threshold_at_far(scores, same, 0.05)[0]
    assert cal.all_pairs_far <= 0.05 and cal.tar == pytest.approx(np.mean(cal.fold_tar))
    assert 0.5 < cal.tar < 1.0  # separated but overlapping distributions
    one = calibrate_far(scores, same, None, 0.05)
    assert one.protocol == "in-sample" and one.tar == one.all_pairs_tar


def test_cross_condition_pairs_never_share_a_condition() -> None:
    subjects = np.repeat(np.arange(4), 6)
    conditions = list(YALE_EXPRESSIONS) * 4
    a, b, same, fold = draw_cross_condition_pairs(subjects, conditions, 200, seed=3)
    cond = np.array(conditions)
    assert (cond[a] != cond[b]).all()
    assert ((subjects[a] == subjects[b]) == same).all()
    # 4 subjects x C(6, 2) = 60 same pairs exist: the set is capped there and balanced
    assert same.sum() == (~same).sum() == 60
    assert len({(int(x), int(y)) for x, y in zip(a, b)}) == 120
    assert np.bincount(fold[same]).tolist() == [6] * 10
    again = draw_cross_condition_pairs(subjects, conditions, 200, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip((a, b, same, fold), again))


def _yale_tree(root: Path, subjects: int = 4) -> None:
    """Yale A layout; each subject is one pattern plus per-condition noise, so pixels identify people."""
    conds = list(YALE_EXPRESSIONS) + ["centerlight", "leftlight", "glasses"]
    for s in range(1, subjects + 1):
        base = np.random.default_rng(s).integers(40, 216, (32, 32)).astype(np.int16)
        for k, c in enumerate(conds):
            noise = np.random.default_rng(100 * s + k).integers(-6, 7, (32, 32))
            write_image(root / f"subject{s:02d}.{c}", np.clip(base + noise, 0, 255).astype(np.uint8))


def test_yale_defaults_to_across_expressions_and_writes_the_card(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _yale_tree(tmp_path / "yale")
    card = _card(tmp_path / "w", threshold=0.5)
    rc = main(["eval-verification", "--weights", str(card), "--data", str(tmp_path / "yale"), "--n-pairs", "200",
               "--far", "0.01", "--write-card", str(card), "--json", "--device", "cpu"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["across_expressions"] is True and "across expressions" in out["protocol"]
    # lighting / glasses images are left out: 4 subjects x 6 expressions, C(6,2) same pairs each
    assert out["images"] == 24 and out["n_same"] == out["n_different"] == 60
    assert out["accuracy"] == 1.0 and out["far_calibration"]["tar"] == 1.0
    assert out["card_threshold"]["threshold"] == 0.5
    assert "TAR 1.0000" in captured.err
    written = json.loads(card.read_text())
    assert written["metrics"]["yale_across_expressions_accuracy"] == 1.0
    assert written["metrics"]["yale_across_expressions_tar_at_far0.01"] == 1.0
    assert written["metrics"]["kept_metric"] == 0.5  # other metrics survive
    assert written["identity_far"] == 0.01 and written["identity_calibration"].startswith("Yale A across expressions")
    assert get_weights(card).identity_tar == 1.0
    # without --far the card's threshold is kept and measured on these pairs
    rc = main(["eval-verification", "--weights", str(card), "--data", str(tmp_path / "yale"), "--n-pairs", "200",
               "--write-card", str(card), "--device", "cpu"])
    assert rc == 0
    capsys.readouterr()
    again = json.loads(card.read_text())
    assert again["identity_threshold"] == written["identity_threshold"]
    assert 0.0 <= again["metrics"]["yale_across_expressions_far_at_card_threshold"] <= 1.0
    assert "yale_across_expressions_tar_at_card_threshold" in again["metrics"]
    # the other conditions remain reachable
    rc = main(["eval-verification", "--weights", str(card), "--data", str(tmp_path / "yale"), "--n-pairs", "100",
               "--no-across-expressions", "--json", "--device", "cpu"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["images"] == 36


def test_lfw_view2_far_card_fields_rank_for_enrolment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_lfw_tree(tmp_path / "lfw_root")
    write_lfw_pairs(tmp_path / "lfw_root" / "pairs.txt", 2)
    card = _card(tmp_path / "w")
    rc = main(["eval-verification", "--weights", str(card), "--data", str(tmp_path / "lfw_root"), "--pairs",
               str(tmp_path / "lfw_root" / "pairs.txt"), "--far", "0.25", "--write-card", str(card), "--json",
               "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    cal = out["far_calibration"]
    w = get_weights(card)
    assert w.identity_threshold == pytest.approx(cal["threshold"], abs=1e-4)
    assert w.identity_far == 0.25 and w.identity_tar == pytest.approx(cal["tar"], abs=1e-4)
    assert w.identity_calibration == "LFW View 2, 8 pairs, 2-fold"
    # the metric enrolment ranks identity features by
    assert w.metrics["lfw_view2_accuracy"] == pytest.approx(out["accuracy"], abs=1e-4)
    assert "lfw_view2_tar_at_far0.25" in w.metrics



def test_update_card_merges_and_keeps_what_it_is_not_told(tmp_path: Path) -> None:
    """Each measuring command adds its keys; an earlier command's keys (known or not) survive."""
    from ferkit.models.weights import Weights

    card = tmp_path / "c.json"
    card.write_text(json.dumps({"name": "x", "metrics": {"a": 1, "b": 2}, "future_key": [1, 2]}))
    Weights.update_card(card, {"identity_far": 0.01}, {"b": 3, "c": 4})
    Weights.update_card(card, metrics={"d": 5})
    assert json.loads(card.read_text()) == {"name": "x", "metrics": {"a": 1, "b": 3, "c": 4, "d": 5},
                                            "future_key": [1, 2], "identity_far": 0.01}
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write leaves no temporary file behind


def test_write_card_refuses_a_missing_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _yale_tree(tmp_path / "yale", subjects=3)
    card = _card(tmp_path / "w")
    rc = main(["eval-verification", "--weights", str(card), "--data", str(tmp_path / "yale"), "--n-pairs", "60",
               "--write-card", str(tmp_path / "nope.json"), "--device", "cpu"])
    assert rc != 0
    assert "export" in capsys.readouterr().err


@pytest.mark.skipif(not (shared_data_dir() / "identity" / "yalefaces" / "subject01.happy").is_file(),
                    reason="needs the shared Yale A images")
def test_align_cuts_real_faces_in_the_weights_crop_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.evaluation.verification import aligned_face_images

    monkeypatch.setenv("FERKIT_CACHE", "off")
    yale = shared_data_dir() / "identity" / "yalefaces"
    paths = [yale / "subject01.happy", yale / "subject02.sad"]
    prep = Preprocessing(input_size=48, grayscale=True, alignment="celeba")
    images, missed = aligned_face_images(paths, prep)
    assert missed == 0 and images.shape == (2, 1, 48, 48) and images.dtype == torch.uint8
    # an aligned face crop is not the whole (mostly white-background) frame
    from ferkit.data.images import read_images

    whole = read_images(paths, grayscale=True, size=48)
    assert (images.float() - whole.float()).abs().mean() > 10
