"""A real TF-IDF matrix from text every Python install carries: the docstrings of the standard library."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path


def stdlib_docstrings(limit: int = 3000, min_words: int = 8) -> list[str]:
    """Distinct docstrings of the standard library's modules, classes and functions, in a fixed order."""
    docs, seen = [], set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= min_words and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
                    if len(docs) >= limit:
                        return docs
    return docs


def tfidf_matrix(limit: int = 3000, dtype=None, norm=None):
    """(n_docs, n_terms) scipy CSR TF-IDF matrix of the stdlib docstrings (English stop words removed).

    ``norm=None`` by default: with unit rows, every document sharing no term with the centres is
    exactly as far from each of them, and such exact ties make label comparisons depend on rounding.
    """
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    dtype = dtype or np.float64
    vectorizer = TfidfVectorizer(stop_words="english", min_df=2, norm=norm, sublinear_tf=True, dtype=dtype)
    return vectorizer.fit_transform(stdlib_docstrings(limit))
