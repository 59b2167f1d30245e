"""gpuclust.app.selection: the model-selection sweep (run_selection) and what it writes."""

import json

import numpy as np


def test_select_json_has_null_not_nan(tmp_path, monkeypatch):
    from gpuclust.app import selection

    X = np.random.RandomState(0).randn(60, 2)
    real = selection.GaussianMixture

    def failing_for_k3(k, **kw):
        if k == 3:
            raise ValueError("ill-defined empirical covariance")
        return real(k, **kw)

    monkeypatch.setattr(selection, "GaussianMixture", failing_for_k3)
    best, paths = selection.run_selection(X, [1, 2, 3], ["diag"], tmp_path, device="cpu")
    text = paths["json"].read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]
    assert rows[2]["bic"] is None and "ill-defined" in rows[2]["error"]
    assert best["n_components"] in (1, 2)
