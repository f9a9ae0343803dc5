"""Shared fixtures: a throwaway tracking store, and a small demo export, raw and clean.

The whole session logs to a tracking store of its own (``MLFLOW_TRACKING_URI`` is set before
any test runs, whatever the caller's shell says), and the session fails if the checkout's own
``mlflow.db``, ``mlruns/``, ``mlartifacts/`` or ``data/`` changed while it ran: tests never
write into the user's store or data.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.demo import DEMO_CLEAN_SIZE, DEMO_PRODUCTS

pytest_plugins = ["tests.helpers.fixtures_servers"]

CHECKOUT = Path(__file__).resolve().parents[1]
USER_STATE = ("mlflow.db", "mlruns", "mlartifacts", "data")
SESSION_EXPERIMENTS = ("tests", "marketplace-search")
_STATE_BEFORE = pytest.StashKey[dict]()
_SESSION_STORE = pytest.StashKey[str]()


def _fingerprint(path: Path) -> object:
    """What a path holds, cheaply: None when absent, (size, mtime) of each file otherwise."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [
        (str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files
    ]


def _session_store() -> str:
    """A sqlite store in a temporary folder, its experiments' artifacts beside it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="pytest-mlflow-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = SqlAlchemyStore(uri, str(folder / "artifacts"))  # the Default experiment's root
    for name in SESSION_EXPERIMENTS:
        store.create_experiment(name, artifact_location=str(folder / "artifacts" / name))
    return uri


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATE_BEFORE] = {n: _fingerprint(CHECKOUT / n) for n in USER_STATE}
    os.environ["MLFLOW_TRACKING_URI"] = session.config.stash[_SESSION_STORE] = _session_store()
    os.environ.pop("MLFLOW_RUN_ID", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_STATE_BEFORE, None)
    if before is None:
        return
    changed = [n for n in USER_STATE if _fingerprint(CHECKOUT / n) != before[n]]
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            f"the tests changed the checkout's own {', '.join(changed)}: a test wrote into the "
            "user's tracking store or data instead of a temporary one"
        )
        if reporter is not None:
            reporter.write_line(f"FAILED checkout state: {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="module")
def no_run_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test module hands the next one an MLflow store, run or experiment:
    ``mlflow.set_tracking_uri``, ``set_experiment`` and ``start_run`` set process-wide
    state (the last two through MLFLOW_EXPERIMENT_ID and MLFLOW_RUN_ID), and a later module
    would log into a store it did not choose (one whose artifacts may land in ./mlruns) or
    attach to an id its own store does not hold. Within a module they stay, as its
    fixtures may rely on them."""
    import mlflow

    before = _top_level_state()
    yield
    while mlflow.active_run():
        mlflow.end_run()
    for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(variable, None)
    mlflow.set_tracking_uri(request.config.stash[_SESSION_STORE])  # it sets the variable too
    mlflow.set_registry_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None
    changed = _changed_since(before)
    assert not changed, (
        f"this module's fixtures changed the checkout's own {', '.join(changed)}: they must "
        "log to a temporary store with its artifacts beside it"
    )


def _top_level_state() -> dict[str, object]:
    """Whether each of the checkout's state paths exists, and its own mtime: cheap enough
    to take around every test, and it changes when a test creates one or adds to its top."""
    return {
        name: (path.stat().st_mtime_ns if path.exists() else None)
        for name in USER_STATE
        for path in [CHECKOUT / name]
    }


def _changed_since(before: dict[str, object]) -> list[str]:
    """The checkout's state paths whose ``_top_level_state`` is no longer ``before``'s."""
    return [name for name, state in _top_level_state().items() if state != before[name]]


@pytest.fixture(autouse=True)
def no_write_into_the_checkout() -> Iterator[None]:
    """Fails the test that wrote into the checkout's own store or data, by name (the
    session's end check catches deeper writes, but cannot say which test made them)."""
    before = _top_level_state()
    yield
    changed = _changed_since(before)
    assert not changed, (
        f"this test changed the checkout's own {', '.join(changed)}: it must log to a "
        "temporary store with its artifacts beside it (see the tracking fixture)"
    )


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store with its artifacts in ``tmp_path``; cwd is ``tmp_path``."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(variable, "")  # recorded, so teardown also removes what mlflow sets
        monkeypatch.delenv(variable)
    mlflow.set_tracking_uri(uri)
    mlflow.tracking.fluent._active_experiment_id = None  # set_experiment's cache, per store
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo export in the raw layout (read-only: copy it before changing it)."""
    from steps.demo_data import make_export

    raw = tmp_path_factory.mktemp("demo") / "raw"
    make_export(raw, products=DEMO_PRODUCTS, seed=0)
    return raw


@pytest.fixture(scope="session")
def demo_clean(demo_raw: Path) -> Path:
    """``demo_raw`` cleaned: tables, categories and images at DEMO_CLEAN_SIZE (read-only)."""
    from steps.clean_images import clean_images
    from steps.clean_tabular import clean_tabular

    clean = demo_raw.parent / "clean"
    with pytest.MonkeyPatch.context() as patch:  # log to a store of its own, not ./mlflow.db
        patch.chdir(demo_raw.parent)  # and its artifacts beside it, not in ./mlruns
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{demo_raw.parent / 'mlflow.db'}")
        for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.setenv(variable, "")
            patch.delenv(variable)
        clean_tabular(demo_raw, clean)
        clean_images(demo_raw, clean, size=DEMO_CLEAN_SIZE)
    return clean
