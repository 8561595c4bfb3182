"""Exporters: ONNX and native formats from any backend, each reloaded and verified.

:func:`export_model` is what the pipeline calls: it looks the exporter up by name, validates its
params, writes the artefact through the request's backend, loads it back and (``verify: true``,
the default) runs it against the native model on batches of other shapes. Frameworks are imported
only when an export runs.
"""

from __future__ import annotations

from typing import Any

from crossframe.export.base import ExportArtifact, ExportRequest

__all__ = ["ExportArtifact", "ExportRequest", "export_model"]


def export_model(exporter_name: str, params: dict[str, Any] | None, request: ExportRequest
                 ) -> tuple[ExportArtifact, dict[str, Any]]:
    """Export ``request`` with the exporter registered as ``exporter_name``; return the artefact and its figures.

    ``params`` are the exporter's params (validated by the schema it registered; ``verify``,
    ``tolerance``, ``opset``, ...). The figures: ``format``, ``backend``, ``exporter``, ``path``,
    ``size_bytes``, ``export_s`` and, when verified, ``verify`` (``max_abs_diff``,
    ``max_rel_diff``, ``tolerance``, ``batches``, ``passed``) and ``verify_s``. Failures raise
    one-line :class:`~crossframe.errors.ExportError` (or ConfigError / CapabilityError for bad
    params or a format the backend cannot write).
    """
    import time

    from crossframe.config.validation import validate_params
    from crossframe.export.verify import verify_export
    from crossframe.plugins import component

    comp = component("exporter", exporter_name, "export.name")
    validated = validate_params(comp.schema, dict(params or {}), f"export.{exporter_name}")
    exporter = comp.obj(validated)
    start = time.perf_counter()
    artifact = exporter.export(request)
    info: dict[str, Any] = {"format": artifact.format, "backend": artifact.backend, "exporter": exporter_name,
                            "path": str(artifact.path), "size_bytes": artifact.size_bytes,
                            "export_s": round(time.perf_counter() - start, 3)}
    if getattr(validated, "verify", True):
        start = time.perf_counter()
        run = exporter.load(artifact)
        tolerance = getattr(validated, "tolerance", None)
        figures = verify_export(run, request, artifact, **({"tolerance": tolerance} if tolerance else {}))
        info["verify"] = figures
        info["verify_s"] = round(time.perf_counter() - start, 3)
        artifact.extra["verify"] = figures
    return artifact, info
