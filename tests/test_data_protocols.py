"""Readers of full-frame datasets (CK+ official, Oulu-CASIA, MMI, SFEW, LFW, Yale) and the registry."""
from __future__ import annotations

import pytest

from ferkit.data.ckplus_official import index_ckplus, load_ckplus
from ferkit.data.errors import DataError
from ferkit.data.lfw import load_lfw, read_pairs
from ferkit.data.mmi import index_mmi, load_mmi
from ferkit.data.oulu import OULU_CLASSES, index_oulu, load_oulu
from ferkit.data.registry import get_dataset, list_datasets, open_index
from ferkit.data.sfew import SFEW_CLASSES, index_sfew, load_sfew
from ferkit.data.yale import YALE_CONDITIONS, index_yale, load_yale
from tests.fixtures.datasets import (LFW_MATCHED, LFW_MISMATCHED, make_ckplus_tree, make_lfw_tree, make_mmi_tree,
                                     make_oulu_tree, make_sfew_tree, make_yale_tree, write_lfw_pairs)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


# ---- CK+ official ---------------------------------------------------------------------------------
def test_ckplus_last3(tmp_path):
    labelled = make_ckplus_tree(tmp_path)
    idx = index_ckplus(tmp_path, "last3")
    assert len(idx) == 3 * len(labelled) and idx.classes[0] == "anger" and len(idx.classes) == 7
    for k, (subject, seq, code, n) in enumerate(labelled):
        chunk = idx.samples[3 * k:3 * k + 3]
        assert [s.path.name for s in chunk] == [f"{subject}_{seq}_{f:08d}.png" for f in (n - 2, n - 1, n)]
        assert {s.label for s in chunk} == {code - 1} and {s.subject for s in chunk} == {subject}
    ds = load_ckplus(tmp_path, "last3", size=32)
    assert ds.images.shape == (9, 1, 32, 32) and ds.subject_names == ["S005", "S010"]


def test_ckplus_last3_plus_neutral(tmp_path):
    labelled = make_ckplus_tree(tmp_path)
    idx = index_ckplus(tmp_path, "last3+neutral")
    assert len(idx) == 4 * len(labelled) and idx.classes[0] == "neutral" and len(idx.classes) == 8
    neutral = [s for s in idx.samples if s.label == 0]
    assert sorted(s.path.name for s in neutral) == sorted(f"{s}_{q}_00000001.png" for s, q, _, _ in labelled)
    assert idx.class_counts()["surprise"] == 3 and idx.class_counts()["disgust"] == 3


def test_ckplus_bad_emotion_file_names_file_and_line(tmp_path):
    make_ckplus_tree(tmp_path)
    bad = next((tmp_path / "Emotion").rglob("*_emotion.txt"))
    bad.write_text("\n   9.0000000e+00\n")
    with pytest.raises(DataError) as err:
        index_ckplus(tmp_path)
    assert bad.name in str(err.value) and err.value.line == 2


def test_ckplus_missing_frames_folder(tmp_path):
    make_ckplus_tree(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "cohn-kanade-images" / "S010" / "006")
    with pytest.raises(DataError, match="S010_006_00000008_emotion.txt"):
        index_ckplus(tmp_path)


def test_ckplus_unreadable_frame(tmp_path):
    make_ckplus_tree(tmp_path)
    frame = tmp_path / "cohn-kanade-images" / "S005" / "001" / "S005_001_00000011.png"
    frame.write_bytes(b"broken")
    with pytest.raises(DataError, match="S005_001_00000011.png"):
        load_ckplus(tmp_path)


# ---- Oulu-CASIA -----------------------------------------------------------------------------------
def test_oulu_last_three_frames(tmp_path):
    make_oulu_tree(tmp_path)
    idx = index_oulu(tmp_path)
    assert len(idx) == 2 * 3 * 3
    assert {s.path.name for s in idx.samples} == {"002.jpeg", "003.jpeg", "004.jpeg"}
    assert idx.class_counts() == {"Anger": 6, "Disgust": 0, "Fear": 0, "Happiness": 6, "Sadness": 0, "Surprise": 6}
    assert idx.subject_names() == ["P001", "P002"] and idx.classes == OULU_CLASSES
    ds = load_oulu(tmp_path, size=32, grayscale=False)
    assert ds.images.shape == (18, 3, 32, 32) and ds.num_subjects() == 2


def test_oulu_other_condition_and_bad_folder(tmp_path):
    make_oulu_tree(tmp_path, variant="Aligned", spectrum="NI", light="Dark")
    assert len(index_oulu(tmp_path, variant="Aligned", spectrum="NI", light="Dark")) == 18
    with pytest.raises(DataError, match="OriginalImg"):
        index_oulu(tmp_path)
    (tmp_path / "Aligned" / "NI" / "Dark" / "P001" / "Contempt").mkdir()
    with pytest.raises(DataError, match="Contempt"):
        index_oulu(tmp_path, variant="Aligned", spectrum="NI", light="Dark")


# ---- MMI ------------------------------------------------------------------------------------------
def test_mmi_middle_frames(tmp_path):
    make_mmi_tree(tmp_path, frames=7)
    idx = index_mmi(tmp_path)
    assert len(idx) == 9
    assert [s.path.name for s in idx.samples[:3]] == ["002.png", "003.png", "004.png"]
    assert [s.label for s in idx.samples[::3]] == [0, 3, 5]  # anger, code 4 = happiness, surprise
    assert [s.subject for s in idx.samples[::3]] == ["S001", "S001", "S002"]
    assert load_mmi(tmp_path, size=24).images.shape == (9, 1, 24, 24)


@pytest.mark.parametrize("line,needle", [("S001-001,joy", "unknown emotion"), ("S001-001,9", "1..6"),
                                         ("S009-001,anger", "missing"), ("S001-001", "fields"),
                                         ("weird,anger", "no subject")])
def test_mmi_bad_label_line(tmp_path, line, needle):
    make_mmi_tree(tmp_path)
    with open(tmp_path / "labels.csv", "a") as fh:
        fh.write(line + "\n")
    (tmp_path / "weird").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=needle) as err:
        index_mmi(tmp_path)
    assert err.value.line == 5 and "labels.csv" in str(err.value)


# ---- SFEW -----------------------------------------------------------------------------------------
def test_sfew(tmp_path):
    make_sfew_tree(tmp_path)
    make_sfew_tree(tmp_path, split="Val", counts=(("Sad", 2),))
    idx = index_sfew(tmp_path, "Train")
    assert idx.class_counts() == {"Angry": 2, "Disgust": 0, "Fear": 0, "Happy": 3, "Neutral": 1, "Sad": 0, "Surprise": 0}
    assert idx.classes == SFEW_CLASSES and idx.subject_names() is None
    val = load_sfew(tmp_path, "Val", size=32)
    assert len(val) == 2 and val.labels.tolist() == [5, 5] and val.subjects is None
    (tmp_path / "Train" / "Bored").mkdir()
    with pytest.raises(DataError, match="Bored"):
        index_sfew(tmp_path)


# ---- LFW ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folds", [None, 2])
def test_lfw_pairs_both_layouts(tmp_path, folds):
    make_lfw_tree(tmp_path)
    write_lfw_pairs(tmp_path / "pairs.txt", folds)
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 8 and sum(p.same for p in pairs) == 4
    want_same = {(f"{n}_{a:04d}.jpg", f"{n}_{b:04d}.jpg") for n, a, b in LFW_MATCHED}
    want_diff = {(f"{n}_{a:04d}.jpg", f"{m}_{b:04d}.jpg") for n, a, m, b in LFW_MISMATCHED}
    assert {(p.first.name, p.second.name) for p in pairs if p.same} == want_same
    assert {(p.first.name, p.second.name) for p in pairs if not p.same} == want_diff
    assert sorted({p.fold for p in pairs}) == ([0] if folds is None else [0, 1])
    if folds == 2:  # fold 0 = first matched block then first mismatched block
        assert [p.same for p in pairs[:4]] == [True, True, False, False] and pairs[4].fold == 1


def test_lfw_pairs_errors(tmp_path):
    make_lfw_tree(tmp_path)
    write_lfw_pairs(tmp_path / "pairs.txt", None)
    text = (tmp_path / "pairs.txt").read_text().splitlines()
    text[2] = "Zico\t1\t9"  # image 9 does not exist
    (tmp_path / "pairs.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as err:
        read_pairs(tmp_path / "pairs.txt")
    assert err.value.line == 3 and "Zico_0009.jpg" in str(err.value)
    text[2] = "Zico\t1"
    (tmp_path / "pairs.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="line 3"):
        read_pairs(tmp_path / "pairs.txt")
    (tmp_path / "pairs.txt").write_text("3\n" + "\n".join(text[1:]) + "\n")
    with pytest.raises(DataError, match="promises 6"):
        read_pairs(tmp_path / "pairs.txt")


def test_lfw_images_as_identities(tmp_path):
    make_lfw_tree(tmp_path)
    ds = load_lfw(tmp_path, size=32, min_images=2)
    assert ds.classes == ["Aaron_Peirsol", "Abel_Pacheco", "Zico"] and len(ds) == 9


# ---- Yale -----------------------------------------------------------------------------------------
def test_yale_gifs(tmp_path):
    make_yale_tree(tmp_path, subjects=2)
    (tmp_path / "Readme.txt").write_text("yale")
    ds = load_yale(tmp_path, size=32)
    assert len(ds) == 12 and ds.classes == ["subject01", "subject02"] and ds.num_subjects() == 2
    by_cond = index_yale(tmp_path, label="condition")
    assert by_cond.classes == [c for c in YALE_CONDITIONS if c in {"happy", "normal", "sad", "sleepy", "surprised", "wink"}]
    assert by_cond.class_counts()["happy"] == 2
    (tmp_path / "subject03.angry").write_bytes((tmp_path / "subject01.happy").read_bytes())
    with pytest.raises(DataError, match="subject03.angry"):
        index_yale(tmp_path)


def test_real_yale_and_orl(shared_data, monkeypatch):
    monkeypatch.delenv("FERKIT_CACHE")
    assert len(load_yale(shared_data / "identity" / "yalefaces")) == 164
    idx = open_index("orl", shared_data / "identity" / "orl_faces")
    assert len(idx) == 400 and len(idx.classes) == 40


# ---- registry -------------------------------------------------------------------------------------
def test_registry_names_and_options(tmp_path):
    assert {"ferplus", "fer2013", "ckplus", "ckplus48", "oulu", "mmi", "sfew", "lfw", "yale", "identity",
            "orl"} <= set(list_datasets())
    make_ckplus_tree(tmp_path)
    idx = open_index("ckplus", tmp_path, protocol="last3+neutral")
    assert len(idx.classes) == 8 and idx.name == "ckplus"
    with pytest.raises(ValueError, match="protocol"):
        open_index("ckplus", tmp_path, protocol="first")
    with pytest.raises(ValueError, match="takes no option"):
        open_index("ckplus", tmp_path, vote="majority")
    with pytest.raises(KeyError, match="known"):
        get_dataset("affectnet")
