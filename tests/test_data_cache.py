"""The decoded-tensor cache: a hit never touches the image files; any change to them is a miss."""
from __future__ import annotations

import os

import pytest
import torch

import ferkit.data.images as images_mod
from ferkit.data.cache import cache_dir
from ferkit.data.ferplus import load_ferplus
from tests.fixtures.datasets import make_ferplus_tree, noise_image, write_image


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


def _forbid_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("image decoded although the cache should have been hit")
    monkeypatch.setattr(images_mod.cv2, "imread", boom)


def test_second_load_does_not_decode(tmp_path, monkeypatch):
    make_ferplus_tree(tmp_path / "s", n=6)
    first = load_ferplus(tmp_path / "s")
    assert len(list((tmp_path / "cache").glob("ferplus-*.pt"))) == 1
    _forbid_decoding(monkeypatch)
    second = load_ferplus(tmp_path / "s")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.meta["cache"].startswith(str(tmp_path / "cache"))
    assert second.paths == first.paths and second.meta["vote"] == "majority"


def test_changed_file_or_params_miss(tmp_path, monkeypatch):
    rows = make_ferplus_tree(tmp_path / "s", n=6)
    load_ferplus(tmp_path / "s")
    load_ferplus(tmp_path / "s", vote="plurality")  # other params: own entry
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    png = tmp_path / "s" / rows[0][0]
    write_image(png, noise_image(999))
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    ds = load_ferplus(tmp_path / "s")
    assert torch.equal(ds.images[0, 0], torch.from_numpy(noise_image(999)))


def test_corrupt_cache_is_rebuilt(tmp_path):
    make_ferplus_tree(tmp_path / "s", n=3)
    ref = load_ferplus(tmp_path / "s")
    (entry,) = (tmp_path / "cache").glob("*.pt")
    entry.write_bytes(b"garbage")
    assert torch.equal(load_ferplus(tmp_path / "s").images, ref.images)


def test_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", "off")
    assert cache_dir() is None
    make_ferplus_tree(tmp_path / "s", n=3)
    load_ferplus(tmp_path / "s")
    assert not (tmp_path / "cache").exists()
