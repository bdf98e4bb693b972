"""Training-data packs for the GPU machine: lossless, and read by the same loaders and recipes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.data.ckplus import load_ckplus48
from ferkit.data.fer2013 import load_fer2013
from ferkit.data.ferplus import load_ferplus
from ferkit.data.identity import list_identity_folders, load_identity_folders
from ferkit.data.pack import decode_images, encode_images
from ferkit.data.packing import pack_dataset, pack_ferplus_split, write_synthetic_packs
from ferkit.recipes.registry import get_recipe
from tests.fixtures.datasets import make_ckplus48_tree, make_ferplus_tree, make_identity_tree
from tests.fixtures.train_context import LocalContext


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERKIT_CACHE", "off")


@pytest.mark.parametrize("shape", [(5, 1, 48, 48), (1100, 1, 8, 8), (3, 3, 16, 12)])
def test_webp_mosaics_are_lossless(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    blob, offsets = encode_images(images)
    assert np.array_equal(decode_images(blob, offsets, shape[0], shape[1:]), images)


def test_ferplus_pack_reads_like_the_folder(tmp_path: Path) -> None:
    make_ferplus_tree(tmp_path / "src" / "FER2013Train")  # every vote case of the fixtures
    pack = pack_ferplus_split(tmp_path / "pack" / "FER2013Train", tmp_path / "src" / "FER2013Train")
    for vote in ("majority", "plurality", "votes"):
        a, b = load_ferplus(tmp_path / "src" / "FER2013Train", vote=vote), load_ferplus(pack, vote=vote)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.soft_labels, b.soft_labels)
        assert [Path(p).name for p in a.paths] == [Path(p).name for p in b.paths]


def test_face_packs_read_like_the_folders(tmp_path: Path) -> None:
    make_ckplus48_tree(tmp_path / "ck")
    ck = load_ckplus48(tmp_path / "ck")
    packed = load_ckplus48(pack_dataset(tmp_path / "pack" / "ckplus48", ck))
    assert torch.equal(ck.images, packed.images) and torch.equal(ck.subjects, packed.subjects)
    assert packed.classes == ck.classes and packed.subject_names == ck.subject_names
    make_identity_tree(tmp_path / "ids", identities=("0001", "0002", "0010"), per_identity=3)
    make_identity_tree(tmp_path / "ids2", identities=("0003",), per_identity=1)
    ids = load_identity_folders(tmp_path / "ids", size=32)
    pack = pack_dataset(tmp_path / "pack" / "ids", ids)
    again = load_identity_folders(pack, size=32, min_images=2)
    assert torch.equal(again.images, ids.images) and again.classes == ["0001", "0002", "0010"]
    assert [name for name, _ in list_identity_folders(pack)] == ["0001", "0002", "0010"]
    assert load_identity_folders(pack, size=16).images.shape[-1] == 16


def test_recipes_and_fer2013_read_synthetic_packs(tmp_path: Path) -> None:
    root = tmp_path / "packs"
    sizes = write_synthetic_packs(root)
    assert set(sizes) == {"ferplus", "ckplus48", "identity"}
    assert len(load_fer2013(root / "ferplus", usage="Training")) == 96
    assert len(load_fer2013(root / "ferplus", usage="PublicTest")) == 32
    runs = [("tfe-jl/resnet18-ferplus", root / "ferplus", {}),
            ("netb/fer2013", root / "ferplus", {"input_size": 32, "width": 0.25}),
            ("eifn/ckplus", root / "ckplus48", {"width": 1 / 16, "id_dim": 8, "folds": 4}),
            ("tfe-jl/deepid-identity", root / "identity" / "celeba_subset",
             {"extra_identity": [str(root / "identity" / "orl_faces")], "holdout_identities": 4}),
            ("netb/lightcnn-identity", root / "identity", {"input_size": 32, "width": 0.25, "val_every": 2})]
    for name, data, options in runs:
        cls = get_recipe(name)
        cls.validate_data(data)
        recipe = cls(data, {"batch_size": 16, "max_steps_per_epoch": 1, **options})
        ctx = LocalContext(tmp_path)
        recipe.setup(ctx)
        results = list(recipe.train_epoch(ctx, 0))
        assert results and all(torch.isfinite(torch.as_tensor(r.loss)) for r in results), name
        assert "val_accuracy" in recipe.evaluate(ctx, 0), name
