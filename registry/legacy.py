"""What it takes to read versions logged by older code of this project, in one place.

- Versions logged before ``marketplace_models`` existed carry their code as
  ``code/registry/`` and an entry file that imports ``registry.model``: in a process that
  has imported this ``registry`` package, that import would find this package, not theirs.
  :func:`own_code_layout` sets this package aside while MLflow loads such a version, so it
  runs with the copy it was logged with. (The service never needs this: it reads every
  version's artifacts with its own code.)
- Versions registered before the ``input`` tag existed are image models
  (:func:`registry.kinds.input_of`).
- Runs logged before metrics were named ``<split>/<name>`` have flat names
  (``test_accuracy``): :func:`canonical_metric` and :func:`legacy_metric` map one spelling
  to the other, so old and new versions compare.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

OLD_CODE_PACKAGE = "registry"
LEGACY_METRIC = re.compile(r"(train|val|test)_(.+)")
METRIC = re.compile(r"(train|val|test)/(.+)")


def has_old_code_layout(model_folder: Path) -> bool:
    """Whether a downloaded version carries its code as ``code/registry/`` (the old layout)."""
    code = Path(model_folder) / "code"
    return (code / OLD_CODE_PACKAGE).is_dir() and not (code / "marketplace_models").is_dir()


def _package_modules(package: str) -> dict[str, object]:
    return {
        name: module
        for name, module in sys.modules.items()
        if name == package or name.startswith(package + ".")
    }


@contextmanager
def own_code_layout(model_folder: Path) -> Iterator[None]:
    """Load a version of the old layout with its own ``registry`` package, then restore ours.

    Does nothing for versions of the current layout.
    """
    if not has_old_code_layout(model_folder):
        yield
        return
    ours = _package_modules(OLD_CODE_PACKAGE)
    for name in ours:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in _package_modules(OLD_CODE_PACKAGE):
            del sys.modules[name]
        sys.modules.update(ours)


def canonical_metric(name: str) -> str:
    """``test_accuracy`` -> ``test/accuracy``; a name already so spelled, or of no split, as is."""
    match = LEGACY_METRIC.fullmatch(name)
    return f"{match[1]}/{match[2]}" if match else name


def legacy_metric(name: str) -> str:
    """``test/accuracy`` -> ``test_accuracy``, the flat name versions logged before."""
    match = METRIC.fullmatch(canonical_metric(name))
    return f"{match[1]}_{match[2]}" if match else name


def canonical_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` with every key under its canonical name; the canonical spelling wins."""
    out = {canonical_metric(k): v for k, v in values.items() if k != canonical_metric(k)}
    out.update({k: v for k, v in values.items() if k == canonical_metric(k)})
    return dict(sorted(out.items()))
