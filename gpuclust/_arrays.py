"""Arrays in, arrays out: the one conversion layer every estimator shares.

Input is converted once, at the public boundary, into a torch tensor on the
estimator's device; results go back in the caller's array type. Where device
and dtype already fit, nothing is copied: numpy shares memory with torch via
``torch.from_numpy`` and CuPy (or anything with ``__dlpack__``) via DLPack.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

_FLOAT_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


@dataclass(frozen=True)
class ArrayKind:
    """Where an input came from, so outputs can be handed back the same way."""

    namespace: str  # "numpy", "torch" or "dlpack"
    device: torch.device
    module: object = None  # for "dlpack" inputs: the namespace whose from_dlpack builds outputs, or None


def resolve_dtype(dtype) -> torch.dtype | None:
    """Map ``None``, a numpy dtype, a string or a torch dtype to a torch float dtype."""
    if dtype is None:
        return None
    key = dtype
    if not isinstance(dtype, (str, torch.dtype)):
        try:
            key = np.dtype(dtype)
        except TypeError:
            key = dtype
    try:
        return _FLOAT_DTYPES[key]
    except (KeyError, TypeError):
        raise ValueError(f"dtype={dtype!r} is not supported; use float32 or float64.") from None


def _kind_of(X) -> ArrayKind:
    if isinstance(X, torch.Tensor):
        return ArrayKind("torch", X.device)
    if isinstance(X, np.ndarray):
        return ArrayKind("numpy", torch.device("cpu"))
    if hasattr(X, "__dlpack__") and hasattr(X, "__dlpack_device__"):
        dev_type, dev_id = X.__dlpack_device__()
        # DLPack device codes: 1 CPU, 2 CUDA, 3 CUDA host (pinned), 13 CUDA managed.
        device = torch.device("cuda", dev_id) if int(dev_type) in (2, 13) else torch.device("cpu")
        return ArrayKind("dlpack", device, _output_namespace(X))
    return ArrayKind("numpy", torch.device("cpu"))


def _output_namespace(X):
    """The namespace whose ``from_dlpack`` makes outputs of X's type, found when X comes in.

    The array API's ``__array_namespace__`` first (CuPy, JAX's ``jax.numpy``, ...), then the
    producer's top-level module if it has ``from_dlpack``; None when neither does, and
    outputs are then torch tensors. Deciding here means a fit never fails at its end.
    """
    get_namespace = getattr(X, "__array_namespace__", None)
    if get_namespace is not None:
        try:
            namespace = get_namespace()
        except Exception:
            namespace = None
        if callable(getattr(namespace, "from_dlpack", None)):
            return namespace
    module = sys.modules.get(type(X).__module__.split(".")[0])
    return module if callable(getattr(module, "from_dlpack", None)) else None


def is_sparse(X) -> bool:
    """True for scipy sparse matrices/arrays and for torch tensors of a sparse layout."""
    if isinstance(X, torch.Tensor):
        return X.layout != torch.strided
    return sp.issparse(X)


def _sparse_error(name):
    # scikit-learn's wording (check_array with accept_sparse=False), which tools match on.
    return TypeError(
        f"Sparse data was passed for {name}, but dense data is required. "
        "Use '.toarray()' to convert to a dense numpy array."
    )


def _from_pandas(X, name):
    """A DataFrame or Series as a numpy array; missing values (pd.NA, NaN, None) are named, not converted."""
    pd = sys.modules["pandas"]
    frame = X.to_frame() if isinstance(X, pd.Series) else X
    if bool(frame.isna().to_numpy().any()):
        columns = [str(c) for c in frame.columns[frame.isna().any().to_numpy()]][:5]
        raise ValueError(
            f"Input {name} contains missing values (pd.NA, NaN or None) in column(s) {columns}; "
            "impute or drop them first."
        )
    try:
        arr = X.to_numpy()
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            arr = X.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold numbers; a column could not be converted: {exc}") from exc
    return arr


def _from_object_array(arr, name):
    """Numbers stored in an object array are converted as scikit-learn does (to float64)."""
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        # The class of numpy's error is kept (TypeError for a dict, ValueError for "abc"), as in scikit-learn.
        error = _NonNumericObject if isinstance(exc, TypeError) else ValueError
        raise error(f"{name} must be numeric; got an array of dtype object with a non-numeric entry: {exc}") from exc


class _NonNumericObject(TypeError):
    """An object array holding something float() refuses; passes through as_tensor's ValueError wrapping."""


def _to_tensor_nocopy(X, kind: ArrayKind, name: str) -> torch.Tensor:
    if kind.namespace == "torch":
        if X.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no data; materialize it first.")
        return X.detach()  # never carry the caller's autograd graph into the fit
    if kind.namespace == "dlpack":
        return torch.from_dlpack(X)
    if "pandas" in sys.modules and isinstance(X, (sys.modules["pandas"].DataFrame, sys.modules["pandas"].Series)):
        arr = _from_pandas(X, name)
    else:
        arr = X if isinstance(X, np.ndarray) else np.asarray(X)
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}; pass real values.")
    if arr.dtype == object:
        arr = _from_object_array(arr, name)
    if arr.dtype.kind in "USVMm":
        raise ValueError(f"{name} must be numeric; got an array of dtype {arr.dtype}.")
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)  # float16, longdouble: torch has no view of them
    if any(stride < 0 for stride in arr.strides):  # torch cannot view negative strides
        arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():
        # Read-only arrays (memory maps, np.frombuffer) are fine: gpuclust never writes into its input.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def as_torch(X, name: str = "X") -> torch.Tensor:
    """View numpy, torch or any ``__dlpack__`` array as a tensor where it lives, without copying."""
    return _to_tensor_nocopy(X, _kind_of(X), name)


def default_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype computed in when none is asked: float32 and float64 stay; anything else
    (integers, bool, float16, bfloat16) becomes float64 on the CPU, as in scikit-learn, and
    float32 on a GPU, where float64 arithmetic runs at 1/2 (H100) to 1/64 (consumer cards)
    of float32's rate and memory holds half as many samples."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float64 if device.type == "cpu" else torch.float32


def _check_shape(shape, name, ndim, allow_empty):
    if ndim is not None and len(shape) != ndim:
        if ndim == 2 and len(shape) < 2:
            raise ValueError(
                f"Expected 2D input, got input with shape {tuple(shape)}.\n"
                "Reshape your data either using array.reshape(-1, 1) if your data has a single feature "
                "or array.reshape(1, -1) if it contains a single sample."
            )
        raise ValueError(f"Found array with dim {len(shape)}, while dim = {ndim} is required for {name}.")
    if allow_empty or ndim is None:
        return
    if shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={tuple(shape)}) while a minimum of 1 is required.")
    if ndim == 2 and shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required.")


def as_tensor(
    X,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    name: str = "X",
    ndim: int | None = 2,
    allow_empty: bool = False,
    check_finite: bool = True,
    accept_sparse: bool = False,
):
    """Validate and convert array-like ``X`` to a tensor on ``device``.

    Parameters
    ----------
    X : array-like, pandas DataFrame, torch.Tensor, object with ``__dlpack__``, or sparse
    device : torch.device
        The estimator's device; the tensor ends up there (one copy if it is not).
    dtype : torch.dtype or None
        Float dtype to compute in. None keeps float32/float64 input as it is and follows
        :func:`default_dtype` for everything else.
    name : str
        Name used in error messages.
    ndim : int or None
        Required number of dimensions.
    allow_empty : bool
    check_finite : bool
        Reject NaN and infinity.
    accept_sparse : bool
        Accept scipy sparse matrices/arrays and torch sparse tensors, returned as a torch
        sparse CSR tensor (never densified); otherwise raise scikit-learn's TypeError.

    Returns
    -------
    tensor : torch.Tensor
    kind : ArrayKind
        Describes the input for :func:`to_output`.
    """
    if X is None:
        raise ValueError(f"{name} is None; expected an array of shape (n_samples, n_features).")
    if isinstance(X, (str, bytes)):
        raise ValueError(f"{name} must be a numeric array, got a string.")
    if is_sparse(X):
        if not accept_sparse:
            raise _sparse_error(name)
        return _as_sparse_csr(X, device=device, dtype=dtype, name=name, allow_empty=allow_empty, check=check_finite)
    kind = _kind_of(X)
    try:
        t = _to_tensor_nocopy(X, kind, name)
    except _NonNumericObject:
        raise
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from exc
    if t.is_complex():
        raise ValueError(f"Complex data not supported: {name} has dtype {t.dtype}; pass real values.")
    _check_shape(t.shape, name, ndim, allow_empty)
    t = t.to(device=device, dtype=dtype or default_dtype(t.dtype, device))
    if check_finite and t.numel() and not _all_finite(t):
        raise ValueError(f"Input {name} contains NaN or infinity; remove or impute them first.")
    return t, kind


def _as_sparse_csr(X, *, device, dtype, name, allow_empty, check):
    """scipy CSR/CSC/COO (matrix or array) or a torch sparse tensor as a torch sparse CSR tensor on ``device``."""
    if isinstance(X, torch.Tensor):
        if X.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no data; materialize it first.")
        kind = ArrayKind("torch", X.device)
        t = X.detach()
        if t.ndim != 2:
            _check_shape(t.shape, name, 2, allow_empty)
        with _no_sparse_beta_warning():
            if t.layout == torch.sparse_coo:
                t = t.coalesce().to_sparse_csr()  # coalesce sums duplicate entries
            elif t.layout != torch.sparse_csr:
                t = t.to_sparse_csr()
            if _has_duplicates(t):
                t = _summed_duplicates(t)
        crow, col, values = t.crow_indices(), t.col_indices(), t.values()
    else:
        kind = ArrayKind("numpy", torch.device("cpu"))
        if X.ndim != 2:
            _check_shape(X.shape, name, 2, allow_empty)
        csr = X.tocsr()  # scikit-learn copies CSC into CSR too
        if not csr.has_canonical_format:
            # Duplicate entries of one position mean their sum (scipy's rule); squared norms and
            # distances summed entry by entry would be wrong. Sum them in a copy, never in the caller's.
            csr = csr.copy() if csr is X else csr
            csr.sum_duplicates()
        if csr.dtype.kind == "c":
            raise ValueError(f"Complex data not supported: {name} has dtype {csr.dtype}; pass real values.")
        if csr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric; got a sparse matrix of dtype {csr.dtype}.")
        crow, col = torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices)
        data = csr.data if csr.data.dtype.byteorder in ("=", "|") else csr.data.astype(csr.data.dtype.newbyteorder("="))
        values = torch.from_numpy(data)
    if values.is_complex():
        raise ValueError(f"Complex data not supported: {name} has dtype {values.dtype}; pass real values.")
    shape = (int(crow.numel()) - 1, int(X.shape[1]))
    _check_shape(shape, name, 2, allow_empty)
    target = dtype or default_dtype(values.dtype, device)
    values = values.to(device=device, dtype=target)
    if check and values.numel() and not _all_finite(values):
        raise ValueError(f"Input {name} contains NaN or infinity; remove or impute them first.")
    crow = crow.to(device=device, dtype=torch.int64)
    col = col.to(device=device, dtype=torch.int64)
    return sparse_csr(crow, col, values, shape), kind


def _has_duplicates(t: torch.Tensor) -> bool:
    """True if a torch CSR tensor stores two values at one position (or its columns are unsorted in a row)."""
    crow, col = t.crow_indices(), t.col_indices()
    if col.numel() < 2:
        return False
    row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=col.device), crow.diff())
    return bool(((col[1:] <= col[:-1]) & (row[1:] == row[:-1])).any())


def _summed_duplicates(t: torch.Tensor) -> torch.Tensor:
    """A new CSR tensor with the duplicate values of ``t`` summed (``t`` is left alone).

    A fresh COO tensor (not ``to_sparse_coo()``, which marks itself coalesced) whose ``coalesce`` sums them.
    """
    crow, col = t.crow_indices(), t.col_indices()
    row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=col.device), crow.diff())
    coo = torch.sparse_coo_tensor(torch.stack([row, col]), t.values(), t.shape, check_invariants=False)
    return coo.coalesce().to_sparse_csr()


@contextlib.contextmanager
def _no_sparse_beta_warning():
    """Silence torch's "Sparse CSR tensor support is in beta": the user asked for none of it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


def sparse_csr(crow, col, values, shape):
    """A torch sparse CSR tensor from its parts (indices already valid: they come from scipy or torch)."""
    with _no_sparse_beta_warning():
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _all_finite(t: torch.Tensor) -> bool:
    # aminmax is one fused pass that propagates NaN; isfinite() would allocate a
    # bool copy of X and runs ~30x slower on the CPU.
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def to_output(t: torch.Tensor, kind: ArrayKind):
    """Return ``t`` as the caller's array type on the caller's device (never with an autograd graph)."""
    t = t.detach()
    if kind.namespace == "torch":
        return t.to(kind.device)
    if kind.namespace == "dlpack":
        t = t.to(kind.device).contiguous()
        # Producers without a from_dlpack of their own get the torch tensor (zero-copy view).
        return t if kind.module is None else kind.module.from_dlpack(t)
    return t.cpu().numpy()


def as_sample_weight(sample_weight, n_samples: int, *, device, dtype) -> torch.Tensor:
    """Validate ``sample_weight`` (None means all ones; a scalar is every sample's weight, checked alike)."""
    if sample_weight is None:
        return torch.ones(n_samples, device=device, dtype=dtype)
    scalar = isinstance(sample_weight, (np.ndarray, np.generic, torch.Tensor)) and sample_weight.ndim == 0
    if isinstance(sample_weight, numbers.Number) or scalar:
        try:
            value = float(sample_weight)
        except (TypeError, ValueError):
            raise ValueError(f"sample_weight={sample_weight!r} must be a number or an array of numbers.") from None
        w = torch.full((n_samples,), value, device=device, dtype=dtype)
    else:
        w, _ = as_tensor(sample_weight, device=device, dtype=dtype, name="sample_weight", ndim=1, allow_empty=True)
        if w.shape[0] != n_samples:
            raise ValueError(f"sample_weight.shape == {tuple(w.shape)}, expected ({n_samples},)!")
    if w.numel() and not _all_finite(w):
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if bool((w < 0).any()):
        raise ValueError("Negative values in data passed to `sample_weight`: sample_weight must be non-negative.")
    if not bool((w > 0).any()):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w
