"""Dataset readers (one module per layout), the in-memory :class:`~ferkit.data.dataset.FaceDataset`,
the decoded-tensor cache, training augmentation and prepared (detected + aligned) datasets.

Pick a reader by name with :mod:`ferkit.data.registry`. Nothing heavy is imported here.
"""
