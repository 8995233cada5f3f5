"""The local model store: a catalog of fetchable models, GGUF metadata, and safe installs."""

# store first: it defines ModelError, which the other modules import.
from slp.models.store import InstalledModel, ModelError, ModelStore, valid_name  # noqa: I001
from slp.models.catalog import CATALOG, DEFAULT_ALIAS, CatalogEntry, find_entry
from slp.models.metadata import ModelMetadata, cached_metadata, read_metadata
from slp.models.fetch import fetch_entry, import_local

__all__ = [
    "CATALOG", "DEFAULT_ALIAS", "CatalogEntry", "InstalledModel", "ModelError", "ModelMetadata",
    "ModelStore", "cached_metadata", "fetch_entry", "find_entry", "import_local", "read_metadata",
    "valid_name",
]
