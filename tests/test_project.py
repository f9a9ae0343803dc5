"""The project's own wiring: dependencies in step, every entry point runnable with --help."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _names(requirements: list[str]) -> dict[str, str]:
    """Requirement name (normalised, extras dropped) -> the full specifier text."""
    out = {}
    for requirement in requirements:
        name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]
        out[name.lower().replace("_", "-")] = requirement.replace(" ", "")
    return out


# The extras that, with the base dependencies, make the full install (conda.yaml's).
FULL_INSTALL_EXTRAS = ("train", "transformers")
# What the service never imports: the train and transformers extras' packages (by module).
TRAIN_ONLY_MODULES = (
    "torch",
    "torchvision",
    "onnx",
    "skops",
    "matplotlib",
    "tqdm",
    "psutil",
    "pynvml",
    "optuna",
    "transformers",
)


def _full_install(project: dict) -> dict[str, str]:
    """The base dependencies and those of :data:`FULL_INSTALL_EXTRAS`, by name."""
    names = _names(project["dependencies"])
    for extra in FULL_INSTALL_EXTRAS:
        for name, text in _names(project["optional-dependencies"][extra]).items():
            names.setdefault(name, text)
    return names


def test_conda_yaml_lists_the_same_dependencies_as_pyproject() -> None:
    """conda.yaml is the full install: the base dependencies plus the train and transformers
    extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _names(pip_section) == _full_install(project)
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert _version(python.split("=")[-1]) >= _version(project["requires-python"].lstrip(">="))


PACKAGES = tuple(
    name.rstrip("*")
    for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
)
FIRST_PARTY = {*PACKAGES, "tests", "bench"}


def _imported_modules(path: Path) -> set[str]:
    """The top-level names ``path`` imports (absolute imports only)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _top_level_imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports at module level (when it is imported)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return _imported_modules_of(tree.body)


def _imported_modules_of(nodes: list[ast.stmt]) -> set[str]:
    modules = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _optional_names(project: dict) -> set[str]:
    """The distributions of the optional engines' extras (postgres, scale): dev and the
    full install's extras aside."""
    extras = project.get("optional-dependencies", {})
    return {
        name
        for extra, requirements in extras.items()
        if extra not in ("dev", "serve", *FULL_INSTALL_EXTRAS)
        for name in _names([r for r in requirements if not r.startswith(project["name"])])
    }


@pytest.mark.parametrize("folders", [PACKAGES, ("tests", "bench")])
def test_every_imported_package_is_declared(folders: tuple[str, ...]) -> None:
    """What the code imports is in the full install (pyproject's dependencies and its train
    and transformers extras; tests and benchmarks, which run in `make install`'s
    environment: or in the dev extra). An optional engine's package (an extra such as
    ``scale``'s ray) may be imported only inside a function, so the code imports without
    it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(_full_install(project))
    optional = _optional_names(project)
    if folders == ("tests", "bench"):
        declared |= set(_names(project["optional-dependencies"]["dev"])) | optional
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            at_import = _top_level_imports(path)
            for module in sorted(_imported_modules(path) - FIRST_PARTY):
                if module in sys.stdlib_module_names or module == "__future__":
                    continue
                names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
                if names & optional and module not in at_import:
                    continue  # an extra's package, imported where the engine is used
                if not names & declared:
                    undeclared.append(f"{path.relative_to(ROOT)}: {module} ({names or '?'})")
    assert undeclared == []


def _version(text: str) -> tuple[int, ...]:
    """``"3.11"`` -> (3, 11): versions compare as numbers (``"3.9" > "3.11"`` as text)."""
    return tuple(int(part) for part in text.strip().split("."))


def test_versions_compare_as_numbers() -> None:
    assert _version("3.11") > _version("3.9")
    assert _version("3.10.2") > _version("3.10")


def _entry_points() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


def test_every_entry_point_is_a_step_module_with_its_parameters() -> None:
    for name, spec in _entry_points().items():
        command = " ".join(spec["command"].split())
        match = re.match(r"python -m (steps\.\w+)", command)
        assert match, f"{name}: command should be `python -m steps.<module>`"
        assert (ROOT / (match.group(1).replace(".", "/") + ".py")).exists(), name
        for parameter in spec.get("parameters", {}):
            assert "{" + parameter + "}" in command, f"{name}: parameter {parameter} unused"


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_mlproject_defaults_are_the_step_defaults(name: str) -> None:
    """Each MLproject default, passed on the command line, parses to the step's own default:
    the two are written once each and must agree (``train``'s come from ``TrainConfig``)."""
    spec = _entry_points()[name]
    module = importlib.import_module(re.match(r"python -m (steps\.\w+)", spec["command"]).group(1))
    parser = module.get_args_parser()
    required = {"ingest": ["--source", "somewhere"]}.get(name, [])
    defaults = vars(parser.parse_args(required))
    checked = 0
    for parameter, declared in spec.get("parameters", {}).items():
        if "default" not in declared:
            continue
        option = "--" + parameter.replace("_", "-")
        given = vars(parser.parse_args([*required, option, str(declared["default"])]))
        assert given[parameter] == defaults[parameter], f"{name}: {parameter}"
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_every_step_has_help(name: str) -> None:
    module = re.match(r"python -m (steps\.\w+)", _entry_points()[name]["command"]).group(1)
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_nothing_happens_at_import_time(tmp_path: Path) -> None:
    """Importing every module creates no file and sets no tracking URI."""
    code = (
        "import importlib, pkgutil, steps, registry, serve\n"
        "for pkg in (steps, registry, serve):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('.__main__'):\n"
        "            importlib.import_module(m.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


# Modules that are torch by design: the networks, and the pyfuncs that training logs.
TORCH_MODULES = (
    "marketplace_models.network",
    "marketplace_models.image",
    "marketplace_models.listing",
)


def test_the_service_imports_without_the_train_extra(tmp_path: Path) -> None:
    """Every module of the service and what it stands on (the registry, search, the
    models' torch-free reading code) imports with the train and transformers extras'
    packages missing: ``pip install '.[serve]'`` is enough (tests/serve/test_serve_extra.py
    runs it for real)."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"BLOCKED = {TRAIN_ONLY_MODULES!r}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "failed = []\n"
        "for root in ('serve', 'registry', 'search', 'clean_data', 'cli', 'stack',"
        " 'marketplace_models'):\n"
        "    package = importlib.import_module(root)\n"
        "    for m in pkgutil.walk_packages(package.__path__, root + '.'):\n"
        f"        if m.name in {TORCH_MODULES!r}:\n"
        "            continue\n"
        "        if m.name.endswith('.__main__') and m.name != 'serve.__main__':\n"
        "            continue\n"
        "        try:\n"
        "            importlib.import_module(m.name)\n"
        "        except ImportError as exc:\n"
        "            failed.append(f'{m.name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_every_file_the_packages_need_is_in_a_non_editable_install() -> None:
    """Each non-Python file inside a package (the service's web page, ...) is named by
    ``[tool.setuptools.package-data]``: a wheel (``pip install '.[serve]'``, the Docker
    image) would leave it out otherwise, and the service would not start."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data.get("package-data", {})
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            inside = path.relative_to(ROOT / package)
            if not any(inside.match(glob) for glob in patterns.get(package, [])):
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers/; a test module imports no other test module
    (nor conftest), so each can be read, moved and run on its own."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for module in _imported_module_paths(path):
            last = module.rsplit(".", 1)[-1]
            if module.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def _imported_module_paths(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_tests_mirror_the_packages() -> None:
    """Each folder of tests/ (helpers aside) is named after a package or folder of the project."""
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - {"helpers"} <= {*PACKAGES, "deploy", "bench"}
