"""The package's shape: the library stands alone, the application sits on top, docs match signatures.

Tests the package as a whole, and the layout of tests/ itself.
"""

import ast
import doctest
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpuclust

PACKAGE = Path(gpuclust.__file__).resolve().parent
ROOT = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
APP_PREFIX = "gpuclust.app"
# The entry point `python -m gpuclust` starts the application by design.
LIBRARY = {m: p for m, p in MODULES.items() if not m.startswith(APP_PREFIX) and m != "gpuclust.__main__"}


def imports_of(name: str, path: Path):
    """(imported module, imported names, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # `from . import x` imports the module x.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            yield target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno
            for sub in submodules:
                yield sub, [], node.lineno


def test_library_never_imports_the_application():
    offenders = [
        f"{name}:{line} imports {target}"
        for name, path in LIBRARY.items()
        for target, _, line in imports_of(name, path)
        if target == APP_PREFIX or target.startswith(APP_PREFIX + ".")
    ]
    assert not offenders, offenders


def test_library_needs_neither_matplotlib_nor_tqdm():
    # A meta-path finder that refuses matplotlib and tqdm stands in for an environment without them.
    code = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('matplotlib', 'tqdm'):
            raise ImportError(f'{name} is not installed (test)')
sys.meta_path.insert(0, Refuse())
import gpuclust
from gpuclust import GaussianMixture, KMeans, kmeans_plusplus
import gpuclust.metrics, gpuclust.distributed, gpuclust.device
gpuclust.KMeans
import numpy as np
X = np.random.RandomState(0).rand(60, 3)
KMeans(2, device='cpu', random_state=0).fit(X)
GaussianMixture(2, device='cpu', random_state=0).fit(X)
assert not {'matplotlib', 'tqdm'} & set(m.split('.')[0] for m in sys.modules), 'loaded anyway'
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_importing_the_library_loads_neither_the_application_nor_a_downloader():
    # Its dependencies (torch, scikit-learn) load urllib and http themselves: what counts is what
    # gpuclust adds on top of them. The deprecated gpuclust.load_fashion_mnist loads the app on use only.
    code = """
import sys
import numpy, scipy, sklearn, sklearn.cluster, sklearn.mixture, sklearn.metrics, torch
before = set(sys.modules)
import gpuclust
gpuclust.KMeans, gpuclust.GaussianMixture
import gpuclust.metrics, gpuclust.distributed, gpuclust.device
added = sorted(m for m in set(sys.modules) - before
               if m.startswith('gpuclust.app') or m.split('.')[0] in ('urllib', 'http', 'gzip', 'tqdm', 'matplotlib'))
assert not added, added
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    gpuclust.load_fashion_mnist
assert 'gpuclust.app.datasets' in sys.modules and caught[0].category is FutureWarning, caught
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_only_way_from_the_library_to_the_application_is_the_deprecated_names():
    # ``gpuclust.__getattr__`` imports gpuclust.app.datasets by name (importlib), for the names that
    # moved there in 0.3 only; no other library module holds an application module's name as a string.
    naming = {
        (name, node.value)
        for name, path in LIBRARY.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and re.fullmatch(rf"{APP_PREFIX}(\.\w+)*", node.value)
    }  # fmt: skip
    assert naming == {("gpuclust", "gpuclust.app.datasets")}, naming


def _graph(modules):
    graph = {}
    for name, path in modules.items():
        graph[name] = {t for t, _, _ in imports_of(name, path) if t in MODULES and t != name}
    return graph


def test_no_import_cycles():
    graph = _graph(MODULES)
    # A package imports its own submodules (`__init__` re-exports); only cycles among the others count.
    for pkg in ("gpuclust", APP_PREFIX):
        graph[pkg] = set()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_private_names_imported_across_modules():
    offenders = []
    for name, path in MODULES.items():
        for target, names, line in imports_of(name, path):
            if not target.startswith("gpuclust"):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                offenders.append(f"{name}:{line} imports {private} from {target}")
    assert not offenders, offenders


def test_application_does_not_reach_into_private_library_modules():
    offenders = [
        f"{name}:{line} imports {target}"
        for name, path in MODULES.items()
        if name.startswith(APP_PREFIX)
        for target, _, line in imports_of(name, path)
        if target.startswith("gpuclust.")
        and not target.startswith(APP_PREFIX)
        and any(part.startswith("_") and part != "_version" for part in target.split(".")[1:])
    ]
    assert not offenders, offenders


def test_argparse_only_in_the_cli():
    users = [name for name, path in MODULES.items() if any(t == "argparse" for t, _, _ in imports_of(name, path))]
    assert users == ["gpuclust.app.cli"], users


def test_one_version_source():
    from importlib.metadata import version

    assert gpuclust.__version__ == version("gpuclust")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "pyproject.toml must read the version dynamically"
    assert (PACKAGE / "py.typed").is_file()


def _documented(section_text):
    """Names in a numpydoc section that have a type line and an indented description under it."""
    return set(re.findall(r"^(\w+) : [^\n]+\n[ ]{4}\S", section_text, re.M))


def _section(doc, title):
    match = re.search(rf"^{title}\n-+\n(.*?)(?=^\w[\w ]*\n-+\n|\Z)", inspect.cleandoc(doc), re.M | re.S)
    return match.group(1) if match else ""


@pytest.mark.parametrize("estimator", [gpuclust.KMeans, gpuclust.GaussianMixture])
def test_every_parameter_and_attribute_is_documented(estimator):
    doc = estimator.__doc__
    params = set(inspect.signature(estimator.__init__).parameters) - {"self"}
    documented = _documented(_section(doc, "Parameters"))
    assert params <= documented, f"undocumented parameters: {params - documented}"
    attributes = _documented(_section(doc, "Attributes"))
    import numpy as np

    fitted = estimator(2, device="cpu", random_state=0).fit(np.random.RandomState(0).rand(40, 3))
    public = {k for k in vars(fitted) if k.endswith("_") and not k.startswith("_")}
    assert public <= attributes, f"undocumented attributes: {public - attributes}"
    assert "Examples" in doc


@pytest.mark.parametrize(
    "module", ["gpuclust.kmeans", "gpuclust.gaussian_mixture", "gpuclust.metrics", "gpuclust.distributed"]
)
def test_docstring_examples_run(module):
    mod = __import__(module, fromlist=["_"])
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module}"
    if module in ("gpuclust.kmeans", "gpuclust.gaussian_mixture"):
        assert result.attempted > 0


# ------------------------------------------------------------------ issue 25: one plan, no switches
LONGEST_LIBRARY_FUNCTION = 60


def test_no_library_function_is_longer_than_sixty_lines():
    offenders = []
    for name, path in LIBRARY.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_LIBRARY_FUNCTION:
                    offenders.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    assert not offenders, offenders


# Where the library may read the environment: torchrun's variables, which say where the process
# group is, never how anything is computed.
ENVIRONMENT_READERS = {"gpuclust.distributed"}


def test_no_environment_variable_or_module_switch_steers_the_library():
    offenders = []
    for name, path in LIBRARY.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                offenders.append(f"{name}:{node.lineno} rebinds module state ({', '.join(node.names)})")
            reads_env = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")) or (
                isinstance(node, ast.Name) and node.id in ("environ", "getenv")
            )
            if reads_env and name not in ENVIRONMENT_READERS:
                offenders.append(f"{name}:{node.lineno} reads the environment")
    assert not offenders, offenders
    import gpuclust.device

    assert not hasattr(gpuclust.device, "force_cuda_paths") and not hasattr(gpuclust.device, "uses_cuda_paths")


def test_one_name_for_the_rows_of_a_tile():
    # chunk_size is the estimators' public parameter (as in cuML); inside, rows per tile are "tile rows".
    retired = re.compile(r"\b(_chunk_rows|rows_per_tile|rows_per_chunk|chunk_slices|balanced_chunk|_chunk)\b")
    offenders = [
        f"{name}:{i} {line.strip()}"
        for name, path in LIBRARY.items()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if retired.search(line)
    ]
    assert not offenders, offenders


def test_one_init_sample_rule_and_one_column_sum():
    defined = {}
    for name, path in LIBRARY.items():
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.FunctionDef) and node.name in ("init_sample", "gather_init_sample", "column_sums",
                                                                   "is_sparse", "rows_of"):  # fmt: skip
                defined.setdefault(node.name, []).append(name)
    assert defined == {
        "init_sample": ["gpuclust.sources"],
        "column_sums": ["gpuclust.sources"],
        "is_sparse": ["gpuclust._arrays"],
        "rows_of": ["gpuclust.sources"],
    }, defined


def test_one_rollback_helper():
    # "A failed fit leaves the estimator unchanged" is written once: gpuclust._base.unchanged_on_error.
    offenders = [
        f"{name}:{i}"
        for name, path in LIBRARY.items()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "__dict__.update(" in line and name != "gpuclust._base"
    ]
    assert not offenders, offenders


# ------------------------------------------------------------------ issue 25: tests grouped by the module they test
TESTS = ROOT / "tests"
# Suites named after what they test across modules, not after one module.
CROSS_CUTTING_SUITES = {
    "test_common": "scikit-learn's estimator checks on both estimators",
    "test_sklearn_suite": "scikit-learn's own KMeans and GaussianMixture test files, run against gpuclust",
    "test_layout": "the package's shape (this file)",
    "test_out_of_core": "out-of-core input (gpuclust.sources) through both estimators",
    "test_sparse": "sparse input (gpuclust._arrays) through both estimators",
    "test_memory": "memory of tiled passes (gpuclust._chunks, sources) through both estimators",
    "test_peers": "the peer libraries of the benchmark harness (gpuclust.app.bench.peers and the README)",
    "test_gpu_check": "benchmarks/gpu_check.sh's dry run",
    "test_cuda_lloyd_overhead": "benchmarks/cuda_lloyd_overhead.py's dry run",
}


def module_under_test(stem):
    """The gpuclust module ``tests/<stem>.py`` is named after (library or application), or None."""
    name = stem.removeprefix("test_")
    candidates = [f"{package}.{prefix}{name}" for package in ("gpuclust", APP_PREFIX) for prefix in ("", "_")]
    return next((module for module in candidates if module in MODULES), None)


def test_every_test_file_is_named_after_a_module_or_is_a_listed_suite():
    stems = sorted(p.stem for p in TESTS.glob("test_*.py"))
    offenders = [stem for stem in stems if module_under_test(stem) is None and stem not in CROSS_CUTTING_SUITES]
    assert not offenders, f"named after neither a gpuclust module nor a listed cross-cutting suite: {offenders}"
    # The list holds only suites that exist and need it.
    assert sorted(set(CROSS_CUTTING_SUITES) - set(stems)) == [], set(CROSS_CUTTING_SUITES) - set(stems)
    assert [s for s in CROSS_CUTTING_SUITES if module_under_test(s)] == []
    # Files named after a review round are what the rule keeps out.
    assert [module_under_test(s) for s in ("test_hardening", "test_dropin_details", "test_gpu_readiness")] == [None] * 3
    assert module_under_test("test_kmeans_core") == "gpuclust._kmeans_core"
    assert module_under_test("test_atomic") == "gpuclust.app._atomic"
    assert module_under_test("test_cli") == "gpuclust.app.cli"
