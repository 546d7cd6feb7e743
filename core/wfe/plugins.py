"""Plugin discovery and the registries of what plugins contribute.

Every plugin, built-in or third-party, is an entry point in the group ``wfe``.
The entry points are loaded one by one (rather than with pluggy's
``load_setuptools_entrypoints``) so that a plugin that fails to import costs a
warning naming it, not the whole run. Setting ``WFE_DISABLE_PLUGIN_AUTOLOAD=1``
loads only the plugins shipped in the ``wfe`` distribution itself.
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

import pluggy

from wfe import hookspecs
from wfe.errors import PluginError
from wfe.specs import ArchitectureSpec, CommandSpec, ReaderSpec, StageSpec, WriterSpec

__all__ = ["Contribution", "PluginInfo", "Registry", "get_registry", "load_registry"]

ENTRY_POINT_GROUP = "wfe"
OWN_DISTRIBUTION = "wfe"

S = TypeVar("S")


@dataclass(frozen=True)
class Contribution(Generic[S]):
    """A descriptor together with the plugin that contributed it."""

    spec: S
    plugin: str


@dataclass
class PluginInfo:
    """What ``wfe plugins`` shows for one plugin."""

    name: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    contributions: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "module": self.module,
            "hooks": self.hooks,
            "contributions": self.contributions,
        }


_KINDS: dict[str, tuple[str, type]] = {
    "stages": ("wfe_stages", StageSpec),
    "readers": ("wfe_readers", ReaderSpec),
    "writers": ("wfe_writers", WriterSpec),
    "architectures": ("wfe_architectures", ArchitectureSpec),
    "commands": ("wfe_commands", CommandSpec),
}


@dataclass
class Registry:
    """Everything the installed plugins contribute, keyed by name."""

    plugins: list[PluginInfo]
    stages: dict[str, Contribution[StageSpec]]
    readers: dict[str, Contribution[ReaderSpec]]
    writers: dict[str, Contribution[WriterSpec]]
    architectures: dict[str, Contribution[ArchitectureSpec]]
    commands: dict[str, Contribution[CommandSpec]]
    failures: dict[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``, or an error naming the closest one."""
        return self._get("stages", "stage", name).spec

    def writer_for(self, fmt: str) -> WriterSpec:
        """The writer whose ``format`` is ``fmt``."""
        return self._get("writers", "output format", fmt).spec

    def architecture(self, name: str) -> ArchitectureSpec:
        return self._get("architectures", "architecture", name).spec

    def reader(self, name: str) -> ReaderSpec:
        return self._get("readers", "reader", name).spec

    def readers_in_probe_order(self, suffix: str) -> list[ReaderSpec]:
        """Readers by priority, those claiming ``suffix`` first among equals."""
        specs = [c.spec for c in self.readers.values()]
        return sorted(specs, key=lambda s: (-s.priority, suffix.lower() not in s.suffixes))

    def _get(self, kind: str, what: str, name: str) -> Contribution[Any]:
        table: dict[str, Contribution[Any]] = getattr(self, kind)
        if name in table:
            return table[name]
        raise PluginError(f"unknown {what} {name!r}", suggest(name, table))


def suggest(name: str, choices: Any) -> str:
    """A 'did you mean' hint, or the list of valid names."""
    names = sorted(choices)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid names: " + ", ".join(repr(n) for n in names) if names else "none is installed"


def _entry_points(autoload: bool) -> list[EntryPoint]:
    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    if not autoload:
        eps = [ep for ep in eps if ep.dist is not None and ep.dist.name == OWN_DISTRIBUTION]
    # Built-ins first, so that conflicts read "builtin vs third-party".
    return sorted(eps, key=lambda ep: (ep.dist is None or ep.dist.name != OWN_DISTRIBUTION,
                                       ep.dist.name if ep.dist else "", ep.name))


def _plugin_name(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "?"
    return dist if ep.name in (dist, "builtin", dist.replace("-", "_")) else f"{dist}:{ep.name}"


def load_registry(
    autoload: bool | None = None, extra_plugins: list[tuple[str, object]] | None = None
) -> Registry:
    """Load every ``wfe`` entry point and build the registries.

    Parameters
    ----------
    autoload
        Load third-party plugins; default: unless ``WFE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    extra_plugins
        ``(name, module_or_object)`` pairs registered as if installed (used by tests
        and by embedding applications).
    """
    if autoload is None:
        autoload = os.environ.get("WFE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    failures: dict[str, str] = {}
    candidates: list[tuple[str, str, str, Any]] = []
    for ep in _entry_points(autoload):
        name = _plugin_name(ep)
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is that plugin's
            failures[name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"plugin {name!r} failed to load and is ignored ({type(exc).__name__}: {exc})",
                stacklevel=2,
            )
            continue
        version = ep.dist.version if ep.dist is not None else "?"
        candidates.append((name, version, ep.value, obj))
    for name, obj in extra_plugins or []:
        candidates.append((name, "local", getattr(obj, "__name__", repr(obj)), obj))

    by_name: dict[str, PluginInfo] = {}
    for name, version, module, obj in candidates:
        if pm.is_registered(obj):
            continue
        pm.register(obj, name=name)
        by_name[name] = PluginInfo(name=name, version=version, module=module)
        infos.append(by_name[name])

    tables: dict[str, dict[str, Contribution[Any]]] = {kind: {} for kind in _KINDS}
    for kind, (hook_name, spec_type) in _KINDS.items():
        table = tables[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            name = impl.plugin_name
            info = by_name[name]
            info.hooks.append(hook_name)
            try:
                specs = list(impl.function() or [])
            except Exception as exc:  # noqa: BLE001 - a failing plugin is that plugin's problem
                failures[name] = f"{hook_name}() raised {type(exc).__name__}: {exc}"
                warnings.warn(f"plugin {name!r}: {hook_name}() failed: {exc}", stacklevel=2)
                continue
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"plugin {name!r}: {hook_name}() returned {spec!r}",
                        f"return {spec_type.__name__} descriptors",
                    )
                key = spec.format if isinstance(spec, WriterSpec) else spec.name
                if key in table:
                    raise PluginError(
                        f"{kind[:-1]} {key!r} is registered by both plugin "
                        f"{table[key].plugin!r} and plugin {name!r}",
                        f"uninstall one of them, or rename the {kind[:-1]} in one",
                    )
                table[key] = Contribution(spec, name)
                info.contributions.setdefault(kind, []).append(key)
    return Registry(plugins=infos, failures=failures, **tables)


@cache
def get_registry() -> Registry:
    """The process-wide registry, loaded once."""
    return load_registry()
