"""Face pipeline on the shipped sample photos: counts, no-face images, eye-level alignment."""
from __future__ import annotations

import math
import threading

import cv2
import numpy as np
import pytest

from ferkit.face.align import alignment_matrix, get_crop_style, transform_points, whole_image_face
from ferkit.face.pipeline import FacePipeline
from ferkit.models.weights import Preprocessing
from ferkit.paths import samples_dir


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(samples_dir() / name)), cv2.COLOR_BGR2RGB)


def _angle(face) -> float:
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    return math.degrees(math.atan2(ry - ly, rx - lx))


@pytest.fixture(scope="module")
def pipeline():
    with FacePipeline(max_faces=8) as p:
        yield p


def test_single_face_found_with_mesh(pipeline):
    faces = pipeline.detect(_rgb("single_face.jpg"))
    assert len(faces) == 1
    f = faces[0]
    assert f.source == "mesh" and f.landmarks.shape == (478, 2) and f.score > 0.5
    x, y, w, h = f.box
    for ex, ey in (f.left_eye, f.right_eye):
        assert x < ex < x + w and y < ey < y + h
    assert f.left_eye[0] < f.right_eye[0]


def test_multi_face_finds_at_least_four(pipeline):
    faces = pipeline.detect(_rgb("multi_face.jpg"))
    assert len(faces) >= 4
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kind", ["black", "gray", "noise"])
def test_no_face_gives_empty_list(pipeline, kind):
    img = {"black": np.zeros((240, 320, 3), np.uint8), "gray": np.full((240, 320, 3), 128, np.uint8),
           "noise": np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)}[kind]
    assert pipeline.detect(img) == []
    assert pipeline.process(img, Preprocessing()) == []


def test_alignment_levels_a_tilted_face(pipeline):
    img = _rgb("single_face.jpg")
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)  # counter-clockwise on screen
    tilted = cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REPLICATE)
    (face,) = pipeline.detect(tilted)
    assert abs(_angle(face) + 20) < 4  # the eye line now falls to the left: about -20 degrees
    pre = Preprocessing(input_size=192, grayscale=False, alignment="fer2013")
    (aligned,) = pipeline.process(tilted, pre)
    assert aligned.crop.shape == (192, 192, 3)
    # independent check: detect again in the aligned crop (padded, so the detector sees context)
    padded = cv2.copyMakeBorder(aligned.crop, 96, 96, 96, 96, cv2.BORDER_REPLICATE)
    with FacePipeline(max_faces=1) as fresh:
        (again,) = fresh.detect(padded)
    assert abs(_angle(again)) < 3
    style = get_crop_style("fer2013")
    mid = (np.array(again.left_eye) + np.array(again.right_eye)) / 2 - 96
    assert np.allclose(mid / 192, style.eye_center, atol=0.04)
    dist = np.hypot(*(np.array(again.right_eye) - np.array(again.left_eye))) / 192
    assert abs(dist - style.eye_distance) < 0.04
    # and the transformed landmarks: eye corners of both eyes on one horizontal line
    pts = transform_points(aligned.matrix, face.landmarks)
    assert abs(pts[[33, 133]].mean(0)[1] - pts[[362, 263]].mean(0)[1]) < 1e-6 * 192 + 1e-3


@pytest.mark.parametrize("gray,size", [(True, 48), (False, 64)])
def test_process_returns_model_inputs(pipeline, gray, size):
    pre = Preprocessing(input_size=size, grayscale=gray, alignment="ckplus48")
    (a,) = pipeline.process(_rgb("single_face.jpg"), pre)
    assert a.crop.shape == (size, size, 1 if gray else 3) and a.crop.dtype == np.uint8


def test_alignment_matrix_maps_eyes_to_style():
    style = get_crop_style("celeba")
    m = alignment_matrix((100.0, 120.0), (160.0, 100.0), style, 128)
    le, re = transform_points(m, np.array([[100.0, 120.0], [160.0, 100.0]]))
    assert abs(le[1] - re[1]) < 1e-9
    assert np.allclose((le + re) / 2 / 128, style.eye_center)
    assert abs(np.hypot(*(re - le)) / 128 - style.eye_distance) < 1e-9


def test_whole_image_face_is_center_crop():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255
    a = whole_image_face(img, 32, grayscale=True)
    assert a.crop.shape == (32, 32, 1) and a.face.box == (50, 0, 100, 100)
    assert a.crop.min() == 255
    assert FacePipeline().process(img, Preprocessing(input_size=32), whole_image=True)[0].crop.min() == 255


def test_pipeline_is_bound_to_one_thread():
    p = FacePipeline()
    p.detect(np.zeros((64, 64, 3), np.uint8))
    errors = []
    t = threading.Thread(target=lambda: errors.append(_catch(lambda: p.detect(np.zeros((64, 64, 3), np.uint8)))))
    t.start()
    t.join()
    p.close()
    assert isinstance(errors[0], RuntimeError)
    with pytest.raises(RuntimeError):
        p.detect(np.zeros((64, 64, 3), np.uint8))


def _catch(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None
