"""Dataset mix-ins of the classifier recipes: the one door from ``--data`` to train/validation sets.

Each mix-in supplies ``data_help``, ``validate_data``, ``load_dataset`` (the full labelled set,
which ``ferkit cv`` splits the same way), its CLI options and ``_load_split(size=None)`` (train,
validation; ``size`` resizes the stored images, e.g. FERSNet's 96x96) and sets ``_data_desc``,
the sentence a weights card's ``data`` field carries. A recipe is
``class MyRecipe(FerplusData, ClassifierRecipe)``; FERSNet uses the same mix-ins.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.ferplus import load_ferplus, training_folder, validation_folder
from ferkit.errors import UsageError
from ferkit.evaluation.kfold import add_fold_arguments, heldout_subject_names, split_dataset_fold
from ferkit.recipes.base import INPUT_SIZE, option
from ferkit.utils.argtypes import positive_int

#: the identity sets under ``../shared/data/identity`` an identity pre-training reads by default
DEFAULT_IDENTITY_SETS = "celeba_subset,orl_faces"


class FerplusData:
    """FER+ (vote-distribution or majority targets): ``--data`` is the folder holding FER2013Train (+ FER2013Valid), or FER2013Train."""

    data_help = "FER+ folder with FER2013Train/ and FER2013Valid/ (label.csv + PNGs), e.g. ../shared/data/ferplus"
    #: False for recipes that need hard labels (FERSNet): no --target option, majority labels
    supports_vote_targets = True
    data_dir: Path
    options: dict[str, Any]

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        training_folder(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path, vote: str = "majority", size: Optional[int] = None) -> FaceDataset:
        return load_ferplus(training_folder(data_dir), vote=vote, size=size)

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vote", choices=["majority", "plurality"], default="majority",
                            help="FER+ label rule of the validation (and of the training labels with "
                                 "--target majority); papers: majority")
        if cls.supports_vote_targets:
            parser.add_argument("--target", choices=["votes", "majority"], default="votes",
                                help="votes (default): cross-entropy against each image's normalised 8-emotion "
                                     "vote distribution (the FER+ paper's PLD), on every image whose votes are "
                                     "mostly emotions; majority: the hard --vote label, as the TFE-JL paper")
        parser.add_argument("--valid", default=None,
                            help="validation folder (default: FER2013Valid beside the training folder)")

    def _load_split(self, size: Optional[int] = None) -> tuple[FaceDataset, Optional[FaceDataset]]:
        vote = option(self.options, "vote", "majority")
        target = option(self.options, "target", "votes") if self.supports_vote_targets else "majority"
        self._soft_targets = target == "votes"
        train_dir = training_folder(self.data_dir)
        if self._soft_targets and (train_dir / "manifest.json").is_file():
            raise UsageError(f"--target votes needs the vote counts of label.csv, and {train_dir} is a prepared "
                             "folder holding labels only: use --target majority, or point --data at the FER+ folder")
        train = load_ferplus(train_dir, vote="votes" if self._soft_targets else vote, size=size)
        valid_dir = self.options.get("valid")
        if valid_dir is None:
            valid_dir = validation_folder(train_dir)
        if valid_dir is not None and Path(valid_dir).resolve() == train_dir.resolve():
            raise UsageError(f"the validation folder {valid_dir} is the training folder: point --data at the FER+ "
                             "root (FER2013Train + FER2013Valid) or pass another --valid")
        val = load_ferplus(valid_dir, vote=vote, size=size) if valid_dir is not None else None
        self._split_info = {"train": train_dir.name, "validation": Path(valid_dir).name if valid_dir else None,
                            "vote": vote, "target": target}
        how = "target = vote distribution" if self._soft_targets else f"{vote} vote labels"
        self._data_desc = (f"FER+ {train_dir.name} ({len(train)} images, {how}); validation "
                           f"{Path(valid_dir).name if valid_dir else 'none'} ({vote} vote)")
        return train, val


class CkplusData:
    """CK+48 with subject-independent folds (``--folds K --fold I --split-seed S``)."""

    data_help = "CK+48 folder (CK+48/<class>/S###_###_########.png), e.g. ../shared/data/ckplus48"
    supports_folds = True
    data_dir: Path
    options: dict[str, Any]

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        cls.load_dataset(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path, size: Optional[int] = None) -> FaceDataset:
        from ferkit.data.ckplus import load_ckplus48

        ds = load_ckplus48(data_dir, size=size)
        if size is None and ds.image_shape != (1, INPUT_SIZE, INPUT_SIZE):
            ds = load_ckplus48(data_dir, size=INPUT_SIZE)
        return ds

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_fold_arguments(parser)

    def _load_split(self, size: Optional[int] = None) -> tuple[FaceDataset, Optional[FaceDataset]]:
        o = self.options
        folds, fold, seed = int(option(o, "folds", 10)), int(option(o, "fold", 0)), int(option(o, "split_seed", 0))
        train, test, desc = split_dataset_fold(self.load_dataset(self.data_dir, size), folds, fold, seed)
        self._data_desc = ("CK+48 7-class, " if test is not None else "CK+48 ") + desc
        self.heldout_subjects = heldout_subject_names(test)
        self._split_info = {"train": "CK+48", "folds": folds, "fold": fold, "split_seed": seed, "by": "subject"}
        return train, test


class Fer2013Data:
    """FER2013's original 7-class labels: trains on Training, validates on PublicTest (``--val-usage``)."""

    data_help = ("a folder holding fer2013_emotion.csv with FER2013Train/FER2013Valid PNGs beside it "
                 "(or the original fer2013.csv), e.g. ../shared/data/ferplus")
    data_dir: Path
    options: dict[str, Any]

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        from ferkit.data.fer2013 import find_csv

        find_csv(Path(data_dir), hint=cls.data_help)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.fer2013 import load_fer2013

        return load_fer2013(data_dir, usage="Training")

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--val-usage", choices=["PublicTest", "PrivateTest", "none"], default="PublicTest",
                            help="FER2013 split to validate on (default PublicTest, the papers' test split; none "
                                 "when its images are not here, e.g. the GPU machine's FER+ train-only pack)")

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        from ferkit.data.fer2013 import load_fer2013

        usage = option(self.options, "val_usage", "PublicTest")
        train = load_fer2013(self.data_dir, usage="Training")
        self._data_desc = f"FER2013 Training ({len(train)} images, original 7-class labels); validation {usage}"
        self._split_info = {"train": "Training", "validation": None if usage == "none" else usage}
        return train, None if usage == "none" else load_fer2013(self.data_dir, usage=usage)


class IdentitySetsData:
    """Identity sets under one folder (``<set>/<identity>/<images>``), merged: the data of the identity
    pre-training stages (Light CNN-9 for Net B, EIFN's identity branch).

    Some identities are held out of training entirely (``--holdout-identities``: the strangers a
    verification check needs); of the others every ``--val-every``-th image is the identification
    validation. Images are read at ``--input-size`` when the recipe has that option, else at the
    recipe's ``identity_image_size``.
    """

    data_help = ("a folder holding identity sets (default celeba_subset and orl_faces, each "
                 "<set>/<identity>/<images>; a Yale A folder or a `ferkit prepare` folder also counts as a set), "
                 "e.g. ../shared/data/identity")
    #: side of the stored images when the recipe has no --input-size
    identity_image_size = 128
    default_holdout_identities = "48"
    data_dir: Path
    options: dict[str, Any]

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        if not Path(data_dir).is_dir():
            raise DataError(data_dir, "identity data folder is missing", hint=cls.data_help)

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--identity-sets", default=DEFAULT_IDENTITY_SETS,
                            help="comma-separated sub-folders of --data, each <identity>/<images> "
                                 "('' = --data is one identity-folder root)")
        parser.add_argument("--holdout-identities", default=cls.default_holdout_identities,
                            help="identities never trained on (verification): N = the last N of the first set, "
                                 "or set=N,... per set (e.g. celeba_subset=48,yalefaces=7 keeps Yale subjects "
                                 "for the across-expressions check)")
        parser.add_argument("--val-every", type=positive_int, default=10,
                            help="every k-th image of each training identity is kept for validation")

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        from ferkit.data.identity import image_holdout_split, load_identity_training_data

        size = int(option(self.options, "input_size", self.identity_image_size))
        sets = option(self.options, "identity_sets", DEFAULT_IDENTITY_SETS)
        data, self.identity_names, self.heldout_subjects = load_identity_training_data(
            self.data_dir, sets, size, option(self.options, "holdout_identities", self.default_holdout_identities))
        tr, va = image_holdout_split(data.labels, int(option(self.options, "val_every", 10)))
        self._data_desc = (f"identity folders {sets} under {self.data_dir.name}/ ({int(tr.numel())} training "
                           f"images, {len(self.identity_names)} identities)")
        return data.subset(tr), data.subset(va)
