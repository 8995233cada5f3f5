"""The local model store: a catalog of fetchable models, Hugging Face pulls, files used in place,
GGUF metadata, and safe installs.

Modules point one way: errors <- catalog, metadata <- fetch <- store <- hub, scan. GGUF reading (gguf,
numpy) and the Hugging Face client are imported on first use, so the agent process, which only needs
the store and the catalog, does not carry them.
"""

from slp.models.catalog import CATALOG, DEFAULT_ALIAS, CatalogEntry, find_entry
from slp.models.errors import ModelError
from slp.models.fetch import fetch_entry, import_local
from slp.models.metadata import ModelMetadata, cached_metadata, read_metadata
from slp.models.store import InstalledModel, ModelFile, ModelStore, valid_name

__all__ = [
    "CATALOG", "DEFAULT_ALIAS", "CatalogEntry", "InstalledModel", "ModelError", "ModelFile", "ModelMetadata",
    "ModelStore", "cached_metadata", "fetch_entry", "find_entry", "import_local", "read_metadata",
    "valid_name",
]
