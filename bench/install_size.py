"""The service's own install (``.[serve]``) against the full one: disk, packages, import cost.

    .venv/bin/python bench/install_size.py                # builds the .[serve] venv in a tmp dir
    .venv/bin/python bench/install_size.py --serve-venv /tmp/serve-venv --full-venv .venv

For each environment: the size of its site-packages (``du``), its distributions, the
largest packages, whether torch imports, and what ``import serve.app`` costs (seconds and
peak memory of a fresh interpreter, this checkout's code; best of ``--repeats``); in the
full one also what ``import torch`` costs (what the service paid at startup before it
imported torch only for a torch engine). The ``.[serve]`` environment is
made with ``python -m venv`` and ``pip install '<copy of this checkout>[serve]'`` unless
``--serve-venv`` names one that exists. Writes ``bench/results/install_size.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "install_size.json"
sys.path.insert(0, str(ROOT))

from cli import ArgumentParser, cli  # noqa: E402

IMPORT_COST = (
    "import resource, time; t = time.perf_counter(); import {module}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def build_serve_venv(venv: Path) -> None:
    """``python -m venv`` + ``pip install '.[serve]'`` from a copy of the checkout."""
    with tempfile.TemporaryDirectory(prefix="serve-extra-src-") as tmp:
        source = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(ROOT / name, source / name)
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
            package = pattern.rstrip("*")
            shutil.copytree(ROOT / package, source / package)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, f"{source}[serve]"], check=True)


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"{venv} has no lib/python3*/site-packages: is it a virtual environment?")
    return found[0]


def megabytes(path: Path) -> float:
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0]) / 1024


def import_cost(python: str, module: str, env: dict[str, str], repeats: int) -> dict:
    """Seconds and peak RSS (MB) of ``import module`` in a fresh interpreter, best of
    ``repeats``."""
    costs = []
    for _ in range(repeats):
        code = IMPORT_COST.format(module=module)
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, env=env, cwd="/"
        )
        if done.returncode != 0:
            raise SystemExit(f"import {module} failed with {python}: {done.stderr[-500:]}")
        seconds, rss_kb = done.stdout.split()
        costs.append((float(seconds), int(rss_kb) / 1024))
    return {
        "seconds": round(min(c[0] for c in costs), 2),
        "peak_rss_mb": round(min(c[1] for c in costs), 1),
    }


def measure(venv: Path, repeats: int, checkout: bool) -> dict:
    """Disk, distributions, largest packages, torch, and the cost of importing the service
    (``checkout``: this checkout's code, not the venv's own install of the project)."""
    packages = site_packages(venv)
    python = str(venv / "bin" / "python")
    sizes = {p.name: megabytes(p) for p in packages.iterdir() if p.is_dir()}
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if checkout:
        env["PYTHONPATH"] = str(ROOT)
    torch = subprocess.run([python, "-c", "import torch"], capture_output=True, env=env)
    row = {
        "venv": str(venv),
        "site_packages_mb": round(megabytes(packages), 1),
        "distributions": len(list(packages.glob("*.dist-info"))),
        "largest_mb": {name: round(size, 1) for name, size in largest},
        "torch_imports": torch.returncode == 0,
        "import_serve_app": import_cost(python, "serve.app", env, repeats),
    }
    if row["torch_imports"]:
        row["import_torch"] = import_cost(python, "torch", env, repeats)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python bench/install_size.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--serve-venv", type=Path, help="a .[serve] venv (built when missing)")
    parser.add_argument("--full-venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-extra-venv-") as tmp:
        serve_venv = args.serve_venv or Path(tmp) / "venv"
        if not (serve_venv / "bin" / "python").exists():
            build_serve_venv(serve_venv)
        rows = {
            "serve": measure(serve_venv, args.repeats, checkout=False),
            "full": measure(args.full_venv.resolve(), args.repeats, checkout=True),
        }
    rows["ratio_site_packages"] = round(
        rows["full"]["site_packages_mb"] / rows["serve"]["site_packages_mb"], 2
    )
    rows["cpus"], rows["load_average"] = os.cpu_count(), round(os.getloadavg()[0], 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    for name in ("serve", "full"):
        row = rows[name]
        print(
            f"{name:<6} {row['site_packages_mb']:>8.0f} MB  {row['distributions']:>4} "
            f"distributions  torch: {'yes' if row['torch_imports'] else 'no'}  "
            f"import serve.app {row['import_serve_app']['seconds']} s, "
            f"{row['import_serve_app']['peak_rss_mb']} MB"
            + (
                f"; import torch {row['import_torch']['seconds']} s, "
                f"{row['import_torch']['peak_rss_mb']} MB"
                if "import_torch" in row
                else ""
            )
        )
    print(f"full / serve: {rows['ratio_site_packages']}x  ({args.results})")


run = cli(main)

if __name__ == "__main__":
    run()
