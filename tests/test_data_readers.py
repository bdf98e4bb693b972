"""Readers of the spine datasets (FER+, FER2013, identity folders, ORL, CK+48) on fixture trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.data.ckplus import load_ckplus48
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.fer2013 import load_fer2013
from ferkit.data.ferplus import FERPLUS_CLASSES, load_ferplus, majority_label, plurality_label
from ferkit.data.identity import load_identity_folders, load_orl
from tests.fixtures.datasets import (VOTE_CASES, make_ckplus48_tree, make_fer2013_csv, make_fer2013_emotion_tree,
                                     make_ferplus_tree, make_identity_tree, make_orl_tree, noise_image)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


# ---- FER+ vote rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("votes,major,plural", VOTE_CASES)
def test_vote_rules_on_hand_made_rows(votes, major, plural):
    assert majority_label(np.array(votes)) == major
    assert plurality_label(np.array(votes)) == plural


@pytest.mark.parametrize("vote", ["majority", "plurality"])
def test_ferplus_reader_applies_rule_and_soft_labels(tmp_path, vote):
    rows = make_ferplus_tree(tmp_path / "FER2013Train")
    ds = load_ferplus(tmp_path / "FER2013Train", vote=vote)
    col = 1 if vote == "majority" else 2
    expected = [(name, case[col]) for (name, _), case in zip(rows, VOTE_CASES) if case[col] is not None]
    assert [Path(p).name for p in ds.paths] == [n for n, _ in expected]
    assert ds.labels.tolist() == [l for _, l in expected]
    assert ds.classes == FERPLUS_CLASSES and ds.meta["vote"] == vote
    assert ds.meta["dropped"] == len(rows) - len(expected)
    assert ds.images.shape == (len(expected), 1, 48, 48) and ds.images.dtype == torch.uint8
    # images are the PNG pixels, soft labels the 8 emotion votes normalised
    i = 0
    seed = int(Path(ds.paths[i]).stem[3:])
    assert torch.equal(ds.images[i, 0], torch.from_numpy(noise_image(seed)))
    votes = torch.tensor(VOTE_CASES[seed][0][:8], dtype=torch.float32)
    assert torch.allclose(ds.soft_labels[i], votes / votes.sum())


def test_ferplus_split_by_name_and_old_layout_without_box(tmp_path):
    make_ferplus_tree(tmp_path / "FER2013Valid", n=3, with_box=False)
    ds = load_ferplus(tmp_path, split="valid")
    assert len(ds) == 2  # cases 0,1 kept; case 2 dropped by majority


def test_ferplus_missing_png_names_file(tmp_path):
    rows = make_ferplus_tree(tmp_path / "s", n=2)
    (tmp_path / "s" / rows[1][0]).unlink()
    with pytest.raises(DataError, match=rows[1][0]):
        load_ferplus(tmp_path / "s")


def test_ferplus_unreadable_png_names_file(tmp_path):
    rows = make_ferplus_tree(tmp_path / "s", n=2)
    (tmp_path / "s" / rows[0][0]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=rows[0][0]):
        load_ferplus(tmp_path / "s")


@pytest.mark.parametrize("bad", ['fer9.png,"(0, 0, 48, 48)",1,2,3', 'fer9.png,"(0, 0, 48, 48)",a,0,0,0,0,0,0,0,0,0',
                                 'fer9.png,"0 0 48 48",10,0,0,0,0,0,0,0,0,0'])
def test_ferplus_malformed_row_names_path_and_line(tmp_path, bad):
    make_ferplus_tree(tmp_path / "s", n=3)
    with open(tmp_path / "s" / "label.csv", "a") as fh:
        fh.write(bad + "\n")
    with pytest.raises(DataError) as err:
        load_ferplus(tmp_path / "s")
    assert err.value.line == 4 and "label.csv, line 4" in str(err.value)


def test_ferplus_missing_label_csv_hints_at_splits(tmp_path):
    make_ferplus_tree(tmp_path / "FER2013Train", n=1)
    with pytest.raises(DataError, match="FER2013Train"):
        load_ferplus(tmp_path)


# ---- FER2013 ------------------------------------------------------------------------------------
def test_fer2013_original_csv_usage_filter(tmp_path):
    rows = make_fer2013_csv(tmp_path / "fer2013.csv", n=9)
    ds = load_fer2013(tmp_path / "fer2013.csv", usage="PublicTest")
    want = [(l, img) for l, u, img in rows if u == "PublicTest"]
    assert ds.labels.tolist() == [l for l, _ in want]
    assert torch.equal(ds.images[:, 0], torch.from_numpy(np.stack([img for _, img in want])))
    assert len(load_fer2013(tmp_path, usage=None)) == 9
    assert ds.classes[0] == "angry" and ds.classes[6] == "neutral"


def test_fer2013_csv_bad_pixels_names_line(tmp_path):
    make_fer2013_csv(tmp_path / "fer2013.csv", n=2)
    with open(tmp_path / "fer2013.csv", "a") as fh:
        fh.write("3,1 2 3,Training\n")
    with pytest.raises(DataError) as err:
        load_fer2013(tmp_path / "fer2013.csv", usage=None)
    assert err.value.line == 4 and "fer2013.csv" in str(err.value)


def test_fer2013_emotion_csv_joined_with_pngs(tmp_path):
    rows = make_fer2013_emotion_tree(tmp_path, n_train=6, n_valid=3, ambiguous=(1,))
    ds = load_fer2013(tmp_path / "fer2013_emotion.csv", usage="Training")
    want = [r for r in rows if r[0] == "Training" and r[3] == 0]
    assert [Path(p).name for p in ds.paths] == [r[1] for r in want]
    assert ds.labels.tolist() == [r[2] for r in want]
    assert len(load_fer2013(tmp_path / "fer2013_emotion.csv", usage="Training", drop_ambiguous=False)) == 6
    assert len(load_fer2013(tmp_path / "fer2013_emotion.csv", usage=["Training", "PublicTest"])) == 8


def test_fer2013_emotion_missing_png(tmp_path):
    rows = make_fer2013_emotion_tree(tmp_path)
    (tmp_path / "FER2013Valid" / rows[-1][1]).unlink()
    with pytest.raises(DataError, match=rows[-1][1]):
        load_fer2013(tmp_path / "fer2013_emotion.csv", usage="PublicTest")


# ---- identity folders ---------------------------------------------------------------------------
def test_identity_folders_rgb_resized(tmp_path):
    make_identity_tree(tmp_path / "casia", identities=("0001", "0002", "0010"), per_identity=3)
    ds = load_identity_folders(tmp_path / "casia", size=32, grayscale=False)
    assert ds.images.shape == (9, 3, 32, 32)
    assert ds.classes == ["0001", "0002", "0010"] and ds.subject_names == ds.classes
    assert ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert torch.equal(ds.labels, ds.subjects)
    assert load_identity_folders(tmp_path / "casia", size=48).images.shape == (9, 1, 48, 48)
    with pytest.raises(DataError, match="at least 4"):
        load_identity_folders(tmp_path / "casia", size=48, min_images=4)


def test_identity_min_images_filter(tmp_path):
    make_identity_tree(tmp_path / "a", identities=("x",), per_identity=1)
    make_identity_tree(tmp_path / "a", identities=("y", "z"), per_identity=2)
    ds = load_identity_folders(tmp_path / "a", size=16, min_images=2)
    assert ds.classes == ["y", "z"] and len(ds) == 4


def test_identity_unreadable_image(tmp_path):
    make_identity_tree(tmp_path / "a", identities=("p",), per_identity=2)
    (tmp_path / "a" / "p" / "002.jpg").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="002.jpg"):
        load_identity_folders(tmp_path / "a", size=16)


def test_orl_natural_order(tmp_path):
    make_orl_tree(tmp_path / "orl", subjects=11, per_subject=2)
    ds = load_orl(tmp_path / "orl", size=48)
    assert ds.classes[:3] == ["s1", "s2", "s3"] and ds.classes[-1] == "s11"
    assert len(ds) == 22 and ds.num_subjects() == 11 and ds.images.shape[1:] == (1, 48, 48)


# ---- CK+48 --------------------------------------------------------------------------------------
def test_ckplus48_labels_and_subjects(tmp_path):
    made = make_ckplus48_tree(tmp_path)
    ds = load_ckplus48(tmp_path)
    assert len(ds) == 12 and ds.num_subjects() == 3
    assert ds.subject_names == ["S010", "S011", "S022"]
    by_name = {Path(p).name: (ds.classes[l], ds.subject_names[s])
               for p, l, s in zip(ds.paths, ds.labels.tolist(), ds.subjects.tolist())}
    for name, cls in made:
        assert by_name[name] == (cls, name[:4])


def test_ckplus48_bad_name(tmp_path):
    make_ckplus48_tree(tmp_path)
    bad = tmp_path / "CK+48" / "anger" / "frame1.png"
    bad.write_bytes((tmp_path / "CK+48" / "anger").glob("*.png").__next__().read_bytes())
    with pytest.raises(DataError, match="frame1.png"):
        load_ckplus48(tmp_path)


# ---- FaceDataset ---------------------------------------------------------------------------------
def test_subset_and_counts():
    ds = FaceDataset(images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8), labels=torch.tensor([0, 1, 1, 2]),
                     classes=["a", "b", "c"], subjects=torch.tensor([5, 5, 6, 7]), paths=list("wxyz"))
    sub = ds.subset([1, 3])
    assert sub.labels.tolist() == [1, 2] and sub.subjects.tolist() == [5, 7] and sub.paths == ["x", "z"]
    assert ds.subset(ds.labels == 1).paths == ["x", "y"]
    assert ds.class_counts() == {"a": 1, "b": 2, "c": 1} and len(ds) == 4
    with pytest.raises(ValueError):
        FaceDataset(images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8), labels=torch.tensor([0, 3]), classes=["a"])


# ---- real data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split,vote,n", [("FER2013Train", "majority", 25045), ("FER2013Valid", "majority", 3191),
                                          ("FER2013Train", "plurality", 26940), ("FER2013Valid", "plurality", 3396)])
def test_real_ferplus_counts(shared_data, monkeypatch, split, vote, n):
    monkeypatch.delenv("FERKIT_CACHE")  # use the checkout's cache: decoding 28k PNGs each run is slow
    ds = load_ferplus(shared_data / "ferplus" / split, vote=vote)
    assert len(ds) == n and ds.images.shape[1:] == (1, 48, 48)


def test_real_ckplus48(shared_data, monkeypatch):
    monkeypatch.delenv("FERKIT_CACHE")
    ds = load_ckplus48(shared_data / "ckplus48")
    assert len(ds) == 981 and ds.num_subjects() == 118 and len(ds.classes) == 7


@pytest.mark.parametrize("usage,drop,n", [("Training", True, 28460), ("Training", False, 28556),
                                          ("PublicTest", True, 3577), ("PublicTest", False, 3579)])
def test_real_fer2013_counts(shared_data, monkeypatch, usage, drop, n):
    monkeypatch.delenv("FERKIT_CACHE")
    ds = load_fer2013(shared_data / "ferplus", usage=usage, drop_ambiguous=drop)
    assert len(ds) == n and ds.meta["usage"] == [usage]
