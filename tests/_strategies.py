"""Estimators that take the branches written for a GPU on any device, for the tests.

The accumulation a fit uses is chosen once per fit from its device and carried by the fit's plan;
a subclass chooses the other one explicitly (no environment variable or module global is involved).
"""

from gpuclust import KMeans


class OneHotKMeans(KMeans):
    """KMeans whose centre sums are one-hot GEMMs (what a fit on CUDA uses), on any device."""

    @staticmethod
    def _accumulates_onehot(device):
        return True
