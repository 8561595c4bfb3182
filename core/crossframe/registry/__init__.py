"""The model registry: versions of trained models with their lineage, aliases and stages.

The embedded default is SQLite in a registry directory (see :mod:`crossframe.registry.location`);
``crossframe models`` drives it and ``models:/NAME@ALIAS`` URIs resolve through
:func:`resolve_model_uri`.
"""

from crossframe.registry.location import registry_dir
from crossframe.registry.store import ModelVersion, Registry, RegistryError
from crossframe.registry.uri import is_model_uri, resolve_model_uri, resolve_run_path

__all__ = ["ModelVersion", "Registry", "RegistryError", "is_model_uri", "registry_dir", "resolve_model_uri",
           "resolve_run_path"]
