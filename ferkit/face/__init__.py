"""Face detection (mediapipe), eye-based alignment and model-ready crops.

``FacePipeline`` (detect / align / process) is the one path from a picture to model inputs, used by
``ferkit prepare`` for training data and by live inference alike. Crop styles live in
:mod:`ferkit.face.align`.
"""
from ferkit.face.align import CROP_STYLES, CropStyle, align_face, get_crop_style, whole_image_face
from ferkit.face.types import AlignedFace, DetectedFace

__all__ = ["AlignedFace", "DetectedFace", "CropStyle", "CROP_STYLES", "align_face", "get_crop_style",
           "whole_image_face", "FacePipeline", "TrackedFacePipeline"]


def __getattr__(name: str):
    # mediapipe is imported only when a pipeline is actually wanted (it is slow to import)
    if name in ("FacePipeline", "TrackedFacePipeline"):
        from ferkit.face import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
