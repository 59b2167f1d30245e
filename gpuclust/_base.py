"""What every gpuclust estimator shares: device/dtype resolution, input conversion, fitted checks."""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import sys
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names, _get_feature_names

from ._arrays import ArrayKind, as_tensor, resolve_dtype, to_output
from .device import resolve_device
from .sources import SourceRows, TensorRows, as_source, is_out_of_core, scan

# What gpuclust adds to scikit-learn's parameters, checked by ``_fit_context`` like the rest.
TORCH_PARAMETER_CONSTRAINTS = {
    "device": [str, torch.device],
    "dtype": [None, StrOptions({"float32", "float64"}), type, np.dtype, torch.dtype],
    "chunk_size": [None, Interval(Integral, 1, None, closed="left")],
    "memory_budget": [None, Interval(Integral, 1, None, closed="left")],
    "distributed": ["boolean"],
}


# Frames in these folders are gpuclust's own or scikit-learn's wrappers (``_fit_context``, pipelines):
# a warning is reported at the first frame outside them, the user's line.
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, sys.modules["sklearn"].__file__)  # sklearn is imported above
)


def warn_user(message, category):
    """``warnings.warn`` pointing at the caller's own line, however deep in gpuclust it is raised."""
    frame, level = sys._getframe(1), 2  # stacklevel 1 is this line, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def no_autocast(method):
    """Run ``method`` with torch's autocast switched off on the CPU and CUDA.

    An estimator called inside ``torch.autocast(...)`` would otherwise compute its products in
    bfloat16 or float16 without saying so; only ``matmul_precision`` may choose a lower precision.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            return method(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def unchanged_on_error(estimator):
    """Leave ``estimator``'s state as it was if the block fails.

    A fit or a fitted call that fails anywhere (bad input, overflow, an unreadable file, an
    interruption) must not leave a half-updated estimator: its attributes are restored.
    """
    state = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(state)
        raise


def check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


class TorchEstimatorMixin:
    """Input handling shared by KMeans and GaussianMixture.

    ``fit`` converts its input with :meth:`_convert_fit_input` and records it with
    :meth:`_set_fit_input` once every check has passed; other methods call
    :meth:`_prepare_input`, which reuses the fitted device and dtype and checks the
    feature count (and names). Results go back through :meth:`_output`.
    """

    _accept_sparse = False

    def _convert_fit_input(self, X):
        """Convert ``fit``'s X on the asked device and dtype, without touching fitted state.

        Returns ``(X_t, kind)``; :meth:`_set_fit_input` records them once every check has passed,
        so a fit that fails validation leaves a fitted estimator as it was.
        """
        device = resolve_device(self.device)
        self._pending_feature_names = _get_feature_names(X)
        return as_tensor(X, device=device, dtype=resolve_dtype(self.dtype), accept_sparse=self._accept_sparse)

    def _set_fit_input(self, X_t, kind):
        self._device = X_t.device
        self._dtype = X_t.dtype
        self._input_kind = kind
        self.n_features_in_ = int(X_t.shape[1])
        names = self.__dict__.pop("_pending_feature_names", None)
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = names

    def _set_fit_source(self, rows):
        """:meth:`_set_fit_input` for out-of-core data (a :class:`gpuclust.sources.SourceRows`): outputs are NumPy."""
        self._device, self._dtype = rows.device, rows.dtype
        self._input_kind = ArrayKind("numpy", torch.device("cpu"))
        self.n_features_in_ = int(rows.shape[1])
        self.__dict__.pop("_pending_feature_names", None)
        self.__dict__.pop("feature_names_in_", None)

    def _source_rows(self, X, device, dtype):
        """Out-of-core X as :class:`gpuclust.sources.SourceRows`, checked by one pass; also its column sums etc."""
        source = as_source(X)
        dtype = source.compute_dtype(device, dtype)
        n, col_sums, total_sq, largest_sq = scan(source, device, dtype)
        return SourceRows(source, device, dtype), (col_sums, total_sq, largest_sq)

    def _prepare_rows(self, X, attribute):
        """Input of a method after ``fit``: in-memory X as :class:`TensorRows`, out-of-core X as :class:`SourceRows`."""
        if is_out_of_core(X):
            self._check_is_fitted(attribute)
            source = as_source(X)
            if source.n_rows is None:  # a callable's rows are counted by one pass
                source.check_count(sum(t.shape[0] for _, t in source.host_tiles(1 << 16)))
            rows = SourceRows(source, self._device, source.compute_dtype(self._device, self._dtype))
            self._check_n_features(rows)
            return rows, ArrayKind("numpy", torch.device("cpu"))
        X_t, kind = self._prepare_input(X, attribute)
        return TensorRows(X_t), kind

    def _check_is_fitted(self, attribute):
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _check_n_features(self, X_t):
        if X_t.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X_t.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )

    def _prepare_input(self, X, attribute):
        self._check_is_fitted(attribute)
        _check_feature_names(self, X, reset=False)
        X_t, kind = as_tensor(X, device=self._device, dtype=self._dtype, accept_sparse=self._accept_sparse)
        self._check_n_features(X_t)
        return X_t, kind

    @staticmethod
    def _output(t: torch.Tensor, kind):
        return to_output(t, kind)
