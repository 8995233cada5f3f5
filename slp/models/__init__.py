"""The local model store: a catalog of fetchable models, GGUF metadata, and safe installs.

GGUF reading (gguf, numpy) and fetching (rich progress bars) are imported on first use, so the agent
process, which only needs the store and the catalog, does not carry them.
"""

from importlib import import_module
from typing import Any

# store first: it defines ModelError, which the other modules import.
from slp.models.store import InstalledModel, ModelError, ModelStore, valid_name  # noqa: I001
from slp.models.catalog import CATALOG, DEFAULT_ALIAS, CatalogEntry, find_entry

_LAZY = {"ModelMetadata": "metadata", "cached_metadata": "metadata", "read_metadata": "metadata",
         "fetch_entry": "fetch", "import_local": "fetch"}

__all__ = [
    "CATALOG", "DEFAULT_ALIAS", "CatalogEntry", "InstalledModel", "ModelError", "ModelMetadata",
    "ModelStore", "cached_metadata", "fetch_entry", "find_entry", "import_local", "read_metadata",
    "valid_name",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"slp.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'slp.models' has no attribute {name!r}")
