"""The package's import graph follows the flow: each layer imports only the layers below it, and serving
(what the API image runs) imports nothing of the training side. Read from the source, so a new import
that breaks the rule fails here before it can reach the image."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "retail_prediction"

# The training side: never imported by serving or the API.
TRAINING_SIDE = ("data", "training", "features.fitting", "features.latent_fit")
# What each layer may import from the package (besides itself). Entry points (cli, serve, healthcheck)
# may import anything.
ALLOWED: dict[str, tuple[str, ...]] = {
    "contract": (),
    "cpus": (),
    "data": ("contract", "cpus"),
    "features": ("contract",),  # fitting and latent_fit also import the served features modules
    "artifact": ("contract",),
    "training": ("contract", "cpus", "data", "features", "artifact", "serving"),
    "serving": ("contract", "features", "artifact"),
    "api": ("contract", "serving", "artifact"),
    # offline reports on what serving logged, featurized by serving's own Predictor (matplotlib only here)
    "monitoring": ("contract", "serving", "artifact"),
    # the model registry: stores archives (artifact), verifies them as the server does (serving), gates them
    # by scoring (training); only the CLI imports it (test_only_the_cli_imports_the_registry)
    "registry": ("contract", "cpus", "data", "features", "artifact", "serving", "training"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Package-internal modules `name` imports, as dotted names relative to the package."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("retail_prediction"):
                target = node.module.removeprefix("retail_prediction").lstrip(".")
            else:
                continue
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            found.update(n for n in [target, *names] if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("retail_prediction.") for a in node.names
                         if a.name.startswith("retail_prediction."))
    modules = _modules()
    return {n for n in found if n in modules and n != name}


def _layer(module: str) -> str:
    return module.split(".")[0]


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) in ALLOWED and n))
def test_imports_point_down_the_flow(name: str) -> None:
    layer = _layer(name)
    allowed = (*ALLOWED[layer], layer)
    wrong = sorted(m for m in _imports(name, MODULES[name]) if not _in(m, allowed))
    assert not wrong, f"{name} imports {wrong}; {layer} may import only {allowed}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _in(n, ("serving", "api", "features", "artifact"))
                                        and not _in(n, TRAINING_SIDE)))
def test_serving_side_imports_nothing_of_training(name: str) -> None:
    wrong = sorted(m for m in _imports(name, MODULES[name]) if _in(m, TRAINING_SIDE))
    assert not wrong, f"{name} (served) imports the training side: {wrong}"


def test_the_graph_is_read() -> None:
    """A guard for the test itself: known edges are found."""
    assert "contract" in _imports("serving.predictor", MODULES["serving.predictor"])
    assert "features.tables" in _imports("features.fitting", MODULES["features.fitting"])
    assert "serving.service" in _imports("training.scoring", MODULES["training.scoring"])


def test_only_the_cli_imports_the_registry() -> None:
    importers = sorted(n for n in MODULES if not _in(n, ("registry",))
                       and any(_in(m, ("registry",)) for m in _imports(n, MODULES[n])))
    assert importers == ["cli"], f"the registry is the CLI's: imported by {importers}"
