"""The model registry: versions of trained models with their lineage, aliases and stages.

The embedded default is SQLite in a registry directory (see :mod:`crossframe.registry.location`);
plugins add other backends (MLflow's Model Registry) through the ``register_model_registries`` hook,
selected with ``NAME:LOCATION`` (see :mod:`crossframe.registry.backends`). ``crossframe models`` drives
them and ``models:/NAME@ALIAS`` URIs resolve through
:func:`resolve_model_uri`.
"""

from crossframe.registry.backends import ModelRegistry, open_registry
from crossframe.registry.location import registry_dir
from crossframe.registry.store import ModelVersion, Registry, RegistryError
from crossframe.registry.uri import is_model_uri, resolve_model_uri, resolve_run_path

__all__ = ["ModelRegistry", "ModelVersion", "Registry", "RegistryError", "is_model_uri", "open_registry",
           "registry_dir", "resolve_model_uri", "resolve_run_path"]
