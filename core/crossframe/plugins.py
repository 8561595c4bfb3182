"""Finding, loading and guarding plugins; the component registry they fill.

Each ``crossframe`` entry point is loaded inside its own guard: a plugin that fails to import,
declares a hook that does not exist, or raises while registering is recorded with its error
and skipped, and everything else keeps working. ``CROSSFRAME_STRICT_PLUGINS=1`` turns any such
failure into an error. ``CROSSFRAME_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry point,
``CROSSFRAME_PLUGINS=a,b`` loads only those, ``CROSSFRAME_DISABLE_PLUGINS=a,b`` (and the CLI's
``--disable-plugin``) skips some; names are entry-point names.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from crossframe import hookspecs
from crossframe.compat import apply_renames, incompatibility
from crossframe.errors import PluginError, did_you_mean, one_of

ENTRY_POINT_GROUP = "crossframe"
CORE_PLUGIN = "crossframe"
#: the statuses of a plugin that is not working (``crossframe plugins`` shows why)
FAILED_STATES = ("failed", "incompatible", "conflict")
#: the distribution of the first-party plugins, which a third party cannot displace
FIRST_PARTY = "crossframe"

#: component kind -> the registration hook that fills it
KINDS: dict[str, str] = {
    "backend": "register_backends",
    "model": "register_models",
    "layer": "register_layers",
    "dataset": "register_datasets",
    "optimizer": "register_optimizers",
    "schedule": "register_schedules",
    "metric": "register_metrics",
    "score_metric": "register_score_metrics",
    "logger": "register_loggers",
    "tokenizer": "register_tokenizers",
    "compressor": "register_compressors",
    "exporter": "register_exporters",
    "model_registry": "register_model_registries",
}


@dataclass
class Component:
    """One registered piece: a backend factory, a model builder, a schedule, ..."""

    kind: str
    name: str
    obj: Any
    plugin: str
    schema: Any = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginRecord:
    """What is known about one plugin: where it came from and whether it works."""

    name: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    status: str = "loaded"  # loaded | failed | incompatible | conflict | disabled
    error: str = ""
    traceback: str = ""
    hooks: list[str] = field(default_factory=list)

    def describe_status(self) -> str:
        """``loaded``, ``disabled`` or ``failed: <why>`` for listings."""
        return f"{self.status}: {self.error}" if self.status in FAILED_STATES else self.status


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """crossframe's view of pluggy: guarded loading, listing and a lazy component registry."""

    def __init__(self, disabled: Iterable[str] = (), strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.strict = _env_flag("CROSSFRAME_STRICT_PLUGINS") if strict is None else strict
        self.disabled = set(disabled) | set(_env_list("CROSSFRAME_DISABLE_PLUGINS"))
        self.records: dict[str, PluginRecord] = {}
        self._components: dict[str, dict[str, Component]] = {}
        self._clashes: dict[str, dict[str, list[Component]]] = {}  # kind -> name -> every provider
        self._qualified: dict[str, dict[str, Component]] = {}  # kind -> 'plugin:name' -> component
        self._loaded = False

    # ------------------------------------------------------------------ loading

    def load(self) -> PluginManager:
        """Register the core plugin and every allowed entry point (once)."""
        if self._loaded:
            return self
        self._loaded = True
        from crossframe import __version__

        # the core's own registrations sit on the top floor: loaded by name, like any entry point
        builtin = importlib.import_module("crossframe.builtin")
        self._register(CORE_PLUGIN, builtin, PluginRecord(CORE_PLUGIN, "crossframe", __version__, builtin.__name__))
        if _env_flag("CROSSFRAME_DISABLE_PLUGIN_AUTOLOAD"):
            return self
        allow = set(_env_list("CROSSFRAME_PLUGINS"))
        for ep, record, rival in self._entry_points():
            self.records[record.name] = record
            if ep.name in self.disabled or record.distribution in self.disabled or (allow and ep.name not in allow):
                record.status = "disabled"
                continue
            if rival is not None:
                self._fail(record, rival, status="conflict")
                continue
            dist = getattr(ep, "dist", None)
            why = incompatibility(dist, __version__)
            if why:
                self._fail(record, why, status="incompatible")
                continue
            try:
                obj = ep.load()
            except BaseException as exc:  # a plugin must never take the host down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._fail(record, f"import of '{ep.value}' raised {type(exc).__name__}: {exc}")
                continue
            self._register(ep.name, obj, record=record)
        return self

    def _entry_points(self) -> list[tuple[Any, PluginRecord, str | None]]:
        """Each ``crossframe`` entry point with its record, and why it clashes with another of the
        same name (None if it does not).

        Two distributions giving one entry-point name is never settled by install order: the
        first-party one (distribution ``crossframe``) keeps it and the other is a conflict; between
        two third parties, neither loads until one is disabled by its distribution name.
        """
        by_name: dict[str, list[tuple[Any, PluginRecord]]] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            record = PluginRecord(name=ep.name, distribution=dist.metadata["Name"] if dist else "",
                                  version=dist.version if dist else "", module=ep.value)
            if ep.name == CORE_PLUGIN:
                print(f"crossframe: entry point '{ep.name}' from '{record.distribution}' ignored: "
                      "the name is reserved for the core", file=sys.stderr)
                continue
            claims = by_name.setdefault(ep.name, [])
            if all((r.distribution, r.module) != (record.distribution, record.module) for _, r in claims):
                claims.append((ep, record))  # the same distribution seen twice on sys.path is one claim
        out: list[tuple[Any, PluginRecord, str | None]] = []
        for name, claims in by_name.items():
            live = [(ep, r) for ep, r in claims if r.distribution not in self.disabled]
            if len(live) <= 1:
                out += [(ep, r, None) for ep, r in (live or claims[:1])]
                continue
            first_party = [(ep, r) for ep, r in live if r.distribution == FIRST_PARTY]
            dists = " and ".join(f"'{r.distribution}'" for _, r in live)
            for ep, record in live:
                if first_party and record.distribution == FIRST_PARTY:
                    out.append((ep, record, None))
                    continue
                keep = "crossframe's own plugin is kept" if first_party else "neither is loaded"
                others = [r.distribution for _, r in live if r is not record]
                key = f"{name}@{record.distribution}"
                self.records[key] = record
                record.name = key
                choose = (f"silence this with --disable-plugin {record.distribution}" if first_party else
                          f"choose with --disable-plugin {record.distribution} or --disable-plugin {others[0]}")
                out.append((ep, record, f"entry point '{name}' is claimed by distributions {dists}; {keep}; "
                                        f"{choose}"))
        return out

    def register(self, plugin: Any, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks, ``crossframe.testing``)."""
        self.load()
        self._register(name, plugin, module=getattr(plugin, "__name__", type(plugin).__name__))
        self._components.clear()

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name`` and forget the components it gave."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.records.pop(name, None)
        self._components.clear()

    def _register(
        self,
        name: str,
        obj: Any,
        record: PluginRecord | None = None,
        distribution: str = "",
        module: str = "",
    ) -> None:
        record = record or PluginRecord(name=name, distribution=distribution, module=module)
        self.records[name] = record
        obj = apply_renames(obj, name, lambda o, attr: self.pm.parse_hookimpl_opts(o, attr) is not None)
        unknown = self._unknown_hooks(obj)
        if unknown:
            self._fail(record, unknown)
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            self._fail(record, f"invalid hook implementation: {exc}")
            return
        record.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(obj) or [])

    def _unknown_hooks(self, obj: Any) -> str:
        """Describe hook implementations that match no hook spec (a misspelt hook name)."""
        known = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "crossframe_spec")]
        for attr in dir(obj):
            opts = self.pm.parse_hookimpl_opts(obj, attr)
            if opts is None or opts.get("optionalhook"):
                continue
            if attr not in known:
                return f"implements unknown hook '{attr}'{did_you_mean(attr, known)}"
        return ""

    def call_guarded(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of ``hook_name``; one that raises marks its plugin failed."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:
                record = self.records.setdefault(impl.plugin_name, PluginRecord(name=impl.plugin_name))
                self._fail(record, f"{hook_name} raised {type(exc).__name__}: {exc}")

    def _fail(self, record: PluginRecord, message: str, status: str = "failed") -> None:
        record.status = status
        record.error = message
        record.traceback = traceback.format_exc() if sys.exc_info()[0] else ""
        if self.pm.has_plugin(record.name):
            self.pm.unregister(name=record.name)
        if self.strict:
            raise PluginError(f"plugin '{record.name}' {message} (CROSSFRAME_STRICT_PLUGINS is set)")

    def check_pending(self) -> None:
        """Fail loudly if any registered plugin implements a hook that has no spec."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginError(f"plugin '{name}': {exc}") from exc

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for calling lifecycle hooks."""
        return self.load().pm.hook

    @property
    def failures(self) -> list[PluginRecord]:
        """Plugins that failed to load or register."""
        self.load()
        return [r for r in self.records.values() if r.status in FAILED_STATES]

    # ------------------------------------------------------------------ components

    def components(self, kind: str) -> dict[str, Component]:
        """All components of ``kind`` by name, calling its registration hook on first use."""
        if kind not in KINDS:
            raise PluginError(f"unknown component kind '{kind}'; expected {one_of(KINDS)}")
        self.load()
        if kind not in self._components:
            self._components[kind] = self._collect(kind)
        return self._components[kind]

    def _collect(self, kind: str) -> dict[str, Component]:
        found: dict[str, Component] = {}
        clashes: dict[str, list[Component]] = {}
        qualified = self._qualified[kind] = {}
        caller = getattr(self.pm.hook, KINDS[kind])
        for impl in caller.get_hookimpls():  # registration order: the core first
            plugin = impl.plugin_name
            added: list[Component] = []

            def register(name: str, obj: Any, *, schema: Any = None, description: str = "",
                         _added: list[Component] = added, _plugin: str = plugin, **extra: Any) -> None:
                _added.append(Component(kind, name, obj, _plugin, schema, description, extra))

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                record = self.records.setdefault(plugin, PluginRecord(name=plugin))
                self._fail(record, f"{KINDS[kind]} raised {type(exc).__name__}: {exc}")
                continue
            for comp in added:
                if comp.schema is None and _is_schema(comp.obj):
                    comp.schema = comp.obj
                qualified[f"{plugin}:{comp.name}"] = comp
                if comp.name in found and found[comp.name].plugin != plugin:
                    clashes.setdefault(comp.name, [found[comp.name]]).append(comp)
                    continue
                found[comp.name] = comp
        for name in clashes:  # never settled by load order: asking for it is an error naming all
            found.pop(name)
        self._clashes[kind] = clashes
        return found

    def _clash_error(self, kind: str, name: str, providers: list[Component], where: str) -> PluginError:
        def who(comp: Component) -> str:
            record = self.records.get(comp.plugin)
            dist = f"distribution '{record.distribution}'" if record and record.distribution else "no distribution"
            return f"plugin '{comp.plugin}' ({dist})"

        def first_party(comp: Component) -> bool:
            record = self.records.get(comp.plugin)
            return comp.plugin == CORE_PLUGIN or bool(record and record.distribution == FIRST_PARTY)

        ranked = sorted(providers, key=lambda c: not first_party(c))  # crossframe's own first
        named = " and ".join(who(c) for c in ranked)
        return PluginError(f"{where}{kind} '{name}' is provided by {named}; choose one with "
                           f"--disable-plugin {ranked[-1].plugin}, or name it '{ranked[0].plugin}:{name}'")

    def get(self, kind: str, name: str, field_name: str | None = None) -> Component:
        """The component ``name`` of ``kind``, or a one-line error listing what exists."""
        available = self.components(kind)
        if name in available:
            return available[name]
        where = f"{field_name}: " if field_name else ""
        if name in self._clashes.get(kind, {}):
            raise self._clash_error(kind, name, self._clashes[kind][name], where)
        if name in self._qualified.get(kind, {}):  # 'plugin:name' picks one of several providers
            return self._qualified[kind][name]
        hint = did_you_mean(name, available)
        broken = [r.name for r in self.failures]
        extra = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
        raise PluginError(f"{where}unknown {kind} '{name}'{hint} (available: {one_of(available)}){extra}")

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` (or ``plugin:name``) names a component of ``kind``, even one two plugins clash on."""
        components = self.components(kind)
        return name in components or name in self._qualified.get(kind, {}) or name in self._clashes.get(kind, {})

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        """Component names by kind that ``plugin`` provides (calls every registration hook)."""
        out: dict[str, list[str]] = {}
        for kind in KINDS:
            self.components(kind)
            names = [c.name for c in self._qualified[kind].values() if c.plugin == plugin]
            if names:
                out[kind] = sorted(names)
        return out


def _is_schema(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic model class (used as the component's params schema)."""
    return isinstance(obj, type) and hasattr(obj, "model_validate") and hasattr(obj, "model_fields")


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager.load()


def configure(disabled: Iterable[str] = (), strict: bool | None = None) -> PluginManager:
    """Replace the process-wide manager (the CLI calls this before anything loads)."""
    global _manager
    _manager = PluginManager(disabled=disabled, strict=strict)
    return _manager.load()


def component(kind: str, name: str, field_name: str | None = None) -> Component:
    """Shortcut: look up one component in the process-wide manager."""
    return get_plugin_manager().get(kind, name, field_name)


hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)

Factory = Callable[..., Any]
