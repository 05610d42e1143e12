"""What an installed wheel needs is in the package, and every third-party import is a declared dependency.

(.ci/wheel_smoke.sh builds the wheel and uses it from outside the repository; these are the fast checks.)
"""

import ast
import fnmatch
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from autofeedback.judges.templates import DEFAULT_TEMPLATES, TASK_MODE, Template, builtin_templates

from .conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGE = REPO / "autofeedback"
# name@hash of every built-in template: request IDs and the reply cache depend on them, so moving or
# re-encoding a template must not change them (these are the hashes from before the move into the package).
PINNED = {"caption.v1": "e9b9dc93", "listwise.v1": "f3c27e42", "pairwise.v1": "9e6230db",
          "pointwise_binary.v1": "dbd0c5cf", "pointwise_score.v1": "89dd34ca", "vqa.v1": "f6ef9782"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_builtin_templates_are_package_data_and_keep_their_hashes():
    found = builtin_templates()
    assert set(found) == set(PINNED) and set(DEFAULT_TEMPLATES.values()) <= set(found)
    for stem, res in found.items():
        tpl = Template.load(stem, TASK_MODE[Template(res).task])
        assert tpl.name == f"{stem}@{PINNED[stem]}"
        assert Path(str(tpl.path)).resolve().is_relative_to(PACKAGE.resolve())  # read from the package
    assert not (REPO / "prompts" / "judges").exists()  # one copy of the templates, not two


def test_a_user_template_file_still_wins_over_the_name_lookup(tmp_path):
    own = tmp_path / "my_pairwise.yaml"
    own.write_text(builtin_templates()["pairwise.v1"].read_text(encoding="utf-8") + "# mine\n")
    tpl = Template.load(str(own), "pairwise")
    assert tpl.name.startswith("my_pairwise@") and tpl.name != f"my_pairwise@{PINNED['pairwise.v1']}"
    assert Template.load("pairwise.v1.yaml", "pairwise").name == f"pairwise.v1@{PINNED['pairwise.v1']}"


def test_every_file_in_the_package_that_is_not_python_is_declared_package_data():
    globs = _pyproject()["tool"]["setuptools"].get("package-data", {}).get("autofeedback", [])
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "the judge templates should be here"
    undeclared = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not undeclared, f"not in [tool.setuptools.package-data]: {undeclared}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    project = _pyproject()["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])
                for req in project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                                      for r in extra]}
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"autofeedback"})
    dists = metadata.packages_distributions()
    missing = {}
    for module in third_party:
        names = {_norm(d) for d in dists.get(module, [])}
        if not names & declared:
            missing[module] = sorted(names) or "not installed"
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_templates_missing_from_an_install_is_a_clear_error(tmp_path, monkeypatch):
    from autofeedback.errors import InputError
    from autofeedback.judges import templates

    monkeypatch.setattr(templates.resources, "files", lambda package: tmp_path)  # a wheel built without package data
    with pytest.raises(InputError, match="missing from the installed package"):
        Template.load(None, "pointwise")
