"""MkDocs hooks: the reference tables come from the files that define them, never copied.

A page holds a marker where a table belongs, and the hook renders it at build time:

- ``<!-- entry-points -->``: every MLproject entry point, its module and its parameters;
- ``<!-- entry-point: NAME ... -->``: NAME's parameters and defaults from MLproject, with
  the meanings written in the marker, one ``parameter: meaning`` per line (indented lines
  continue the one above); a meaning for a parameter MLproject lacks is an error;
- ``<!-- serve-settings -->``: every setting of the service, from ``serve.settings``;
- ``<!-- import-contracts -->``: the import-linter contracts in ``pyproject.toml``;
- ``<!-- ranking-features -->``: the learned ranker's features, in their order, from the
  table of ``search.ranking``'s docstring (a feature it does not describe is an error);
- ``<!-- include: PATH -->``: a Markdown file of the repository (``bench/README.md``), its
  headings one level down.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(
    r"<!--\s*(entry-points|entry-point:|serve-settings|import-contracts|ranking-features|include:)"
    r"(.*?)-->",
    re.S,
)


class DocsError(Exception):
    """A marker that cannot be rendered: the build stops and says which and why."""


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def entry_points() -> dict[str, dict]:
    """MLproject's entry points, as written there."""
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


def _default(spec: dict) -> str:
    if "default" not in spec:
        return "(required)"
    return f"`{spec['default']}`"


def _module(command: str) -> str:
    found = re.search(r"python -m (\S+)", command)
    return found.group(1) if found else command.split()[0]


def parse_meanings(text: str) -> dict[str, str]:
    """``name: meaning`` lines (indented lines continue the previous one) as a dict."""
    meanings: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and name is not None:
            meanings[name] += " " + line.strip()
            continue
        key, sep, meaning = line.partition(":")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key.strip()):
            raise DocsError(f"expected 'parameter: meaning', got {line.strip()!r}")
        name = key.strip()
        meanings[name] = meaning.strip()
    return meanings


def entry_point_table(body: str) -> str:
    """One entry point's parameters, defaults from MLproject, meanings from the page."""
    name, _, rest = body.strip().partition("\n")
    name = name.strip()
    points = entry_points()
    if name not in points:
        raise DocsError(f"MLproject has no entry point {name!r} (it has {', '.join(points)})")
    parameters = points[name].get("parameters", {})
    meanings = parse_meanings(rest)
    stale = sorted(set(meanings) - set(parameters))
    if stale:
        raise DocsError(f"entry point {name!r} has no parameter {', '.join(stale)} in MLproject")
    module = _module(points[name]["command"])
    lines = [
        f"`mlflow run . -e {name}` runs `python -m {module}`; its parameters, with the "
        "defaults MLproject gives them:",
        "",
        "| parameter | default | meaning |",
        "|---|---|---|",
    ]
    for parameter, spec in parameters.items():
        meaning = _cell(meanings.get(parameter, ""))
        lines.append(f"| `{parameter}` | {_cell(_default(spec))} | {meaning} |")
    return "\n".join(lines)


def entry_points_table() -> str:
    """Every entry point: the module it runs and its parameters with their defaults."""
    lines = ["| entry point | runs | parameters (defaults) |", "|---|---|---|"]
    for name, point in entry_points().items():
        parameters = ", ".join(
            f"`{p}`" + (f" ({spec['default']})" if "default" in spec else " (required)")
            for p, spec in point.get("parameters", {}).items()
        )
        lines.append(
            f"| `{name}` | `python -m {_module(point['command'])}` | {_cell(parameters)} |"
        )
    return "\n".join(lines)


def settings_table() -> str:
    """The service's settings: variable, default and meaning, from ``serve.settings``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from serve.settings import environment_table

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, meaning in environment_table():
        shown = f"`{default}`" if default else "(unset)"
        lines.append(f"| `{variable}` | {_cell(shown)} | {_cell(meaning)} |")
    return "\n".join(lines)


def contracts_table() -> str:
    """The import-linter contracts of ``pyproject.toml``, as a list."""
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = []
    for contract in linter["contracts"]:
        kind = contract["type"]
        if kind == "layers":
            detail = "layers, top to bottom: " + " over ".join(
                f"`{layer}`" for layer in contract["layers"]
            )
        elif kind == "forbidden":
            detail = (
                f"`{'`, `'.join(contract['source_modules'])}` may not import `"
                + "`, `".join(contract["forbidden_modules"])
                + "`"
            )
        else:
            detail = f"{kind} in `" + "`, `".join(contract.get("ancestors", [])) + "`"
        lines.append(f"- **{contract['name']}** ({detail})")
    return "\n".join(lines)


def ranking_features_table() -> str:
    """``search.ranking.FEATURES`` in order, each with what the module's docstring says."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import search.ranking as ranking

    meanings: dict[str, str] = {}
    name = None
    for line in (ranking.__doc__ or "").splitlines():
        words = line.split(maxsplit=1)
        if line.startswith("    ") and words and words[0] in ranking.FEATURES:
            name = words[0]
            meanings[name] = words[1].strip() if len(words) > 1 else ""
        elif line.startswith("      ") and name is not None:
            meanings[name] += " " + line.strip()
        elif not line.strip():
            name = None
    missing = [feature for feature in ranking.FEATURES if not meanings.get(feature)]
    if missing:
        raise DocsError(f"search/ranking.py's docstring does not describe {', '.join(missing)}")
    lines = ["| # | feature | what it is (NaN where it does not apply) |", "|---|---|---|"]
    for number, feature in enumerate(ranking.FEATURES, 1):
        lines.append(f"| {number} | `{feature}` | {_cell(meanings[feature])} |")
    return "\n".join(lines)


def include(path: str) -> str:
    """A repository Markdown file without its title, its headings one level down, so it sits
    under the page's."""
    text = (ROOT / path.strip()).read_text()
    text = re.sub(r"\A# .*\n", "", text)
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)


def render(markdown: str) -> str:
    """The page with every marker replaced by what it stands for."""

    def replace(match: re.Match) -> str:
        kind, body = match.group(1), match.group(2)
        if kind == "entry-points":
            return entry_points_table()
        if kind == "entry-point:":
            return entry_point_table(body)
        if kind == "serve-settings":
            return settings_table()
        if kind == "import-contracts":
            return contracts_table()
        if kind == "ranking-features":
            return ranking_features_table()
        return include(body)

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs' hook: render the page's markers; a marker that cannot be rendered stops the build."""
    from mkdocs.exceptions import PluginError

    try:
        return render(markdown)
    except DocsError as error:
        raise PluginError(f"{page.file.src_path}: {error}") from error
