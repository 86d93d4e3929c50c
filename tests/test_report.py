"""Figures stay figures at many tasks: a heatmap is capped in size whatever the number of rows."""
import numpy as np

from manytask.report import MAX_INCHES, heatmap


def test_a_617_task_heatmap_is_capped(tmp_path):
    from matplotlib.image import imread

    names = [f"t{i}" for i in range(617)]
    heatmap(np.random.default_rng(0).random((617, 617)), names, names, tmp_path / "big.png")
    height, width = imread(tmp_path / "big.png").shape[:2]
    assert max(height, width) <= MAX_INCHES * 120 + 1
