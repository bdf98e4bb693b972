"""`ferkit bench`: measured speed figures (models, pipeline, training, memory); a benchmark, not a test."""
