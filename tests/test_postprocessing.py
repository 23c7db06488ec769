"""experiments/postprocessing.py: the transforms do what their names say on the data they are fitted on."""

from __future__ import annotations

import numpy as np

from conftest import load_experiment


def transforms(fit):
    return load_experiment("postprocessing").transforms(fit)


def test_centering_removing_directions_and_whitening():
    data = np.random.RandomState(0).randn(300, 16) * np.arange(1, 17) + 5.0
    ways = transforms(data)
    assert np.allclose(ways["raw"](data), data)
    assert np.allclose(ways["center"](data).mean(axis=0), 0.0)
    # the largest-variance axis (the last column) is the first direction removed
    assert ways["drop1"](data)[:, -1].var() < 0.05 * data[:, -1].var()
    assert np.allclose(ways["drop1"](data)[:, 0], ways["center"](data)[:, 0], atol=0.5)
    whitened = ways["whiten_all"](data)
    assert np.allclose(whitened.T @ whitened, np.eye(16), atol=1e-8)
    assert ways["whiten256"](data).shape == (300, 16)  # k past the dimensions keeps them all
