"""The service tests' registries: built once per module, copied per test (artifacts shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.served_versions import (
    GOOD,
    add_listing_models,
    copy_store,
    make_store,
    set_alias,
)


def _template(tmp_path_factory: pytest.TempPathFactory, name: str, listing: bool) -> Path:
    folder = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # anything logged to ./mlruns goes beside the store, not the checkout
        uri = make_store(folder)
        if listing:
            add_listing_models(uri)
    return folder


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry of the image versions of ``tests.helpers.served_versions``."""
    return _template(tmp_path_factory, "served-store", listing=False)


@pytest.fixture(scope="module")
def listing_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``store_template``'s versions, and a text and a listing model."""
    return _template(tmp_path_factory, "listing-store", listing=True)


@pytest.fixture
def store(store_template: Path, tmp_path: Path) -> str:
    """A private copy of the image registry: its tracking URI, nothing promoted."""
    return copy_store(store_template, tmp_path / "store")


@pytest.fixture
def production_store(store: str) -> str:
    """``store`` with image version GOOD in production."""
    set_alias(store, GOOD)
    return store


@pytest.fixture
def listing_store(listing_store_template: Path, tmp_path: Path) -> str:
    """A private copy of the registry with every kind, image version GOOD in production."""
    uri = copy_store(listing_store_template, tmp_path / "store")
    set_alias(uri, GOOD)
    return uri
