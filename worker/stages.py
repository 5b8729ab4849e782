"""Stages: which function handles the items of each workflow stage.

A *stage function* is registered under a name with :func:`stage_function`,
optionally as the default for a stage. The *stage map* assigns functions to
stages: the registered defaults, extended or overridden by configuration that
names a function by registered name or as ``module:function``, optionally with
keyword arguments passed after the item.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import logging
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from worker.errors import ConfigurationError

logger = logging.getLogger(__name__)

StageCallable = Callable[..., Any]
F = TypeVar("F", bound=StageCallable)

#: registered name -> function
_functions: dict[str, StageCallable] = {}
#: stage name -> registered name of its default function
_defaults: dict[str, str] = {}

MAP_ENTRY_KEYS = {"function", "kwargs", "timeout", "leaseSeconds"}


def stage_function(name: str | None = None, *, stage: str | None = None) -> Callable[[F], F]:
    """Register a stage function under ``name`` (default: the function's name).

    With ``stage``, the function handles that stage unless the stage map says
    otherwise.
    """

    def register(function: F) -> F:
        registered = name or function.__name__
        _functions[registered] = function
        if stage is not None:
            _defaults[stage] = registered
        return function

    return register


def registered_functions() -> dict[str, StageCallable]:
    return dict(_functions)


def default_stages() -> dict[str, str]:
    return dict(_defaults)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A workflow stage and how to process its items."""

    name: str
    function: StageCallable
    function_name: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: seconds a call may take before it is recorded as Failed; None: no limit
    timeout: float | None = None
    #: lease for this stage's claims; None: the worker's setting
    lease_seconds: float | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


@dataclasses.dataclass(frozen=True)
class StageEntry:
    """One entry of a stage map before its function is looked up."""

    function: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float | None = None
    lease_seconds: float | None = None


# ---------------------------------------------------------------- modules


def import_stage_package(package: str = "stages") -> list[ModuleType]:
    """Import every module of the stage package, so that their functions register."""
    try:
        root = importlib.import_module(package)
    except ImportError as error:
        raise ConfigurationError(f"cannot import the stage package {package!r}: {error}") from error
    modules = [root]
    for info in pkgutil.iter_modules(getattr(root, "__path__", []), prefix=f"{package}."):
        modules.append(_import_module(info.name))
    return modules


def load_modules(specs: Iterable[str]) -> list[ModuleType]:
    """Import extra stage modules given as file paths or dotted module names."""
    return [_import_spec(spec) for spec in specs if spec.strip()]


def _import_spec(spec: str) -> ModuleType:
    spec = spec.strip()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return _import_file(Path(spec))
    return _import_module(spec)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise ConfigurationError(
            f"stage module {name!r} failed to import: {type(error).__name__}: {error}"
        ) from error


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigurationError(
            f"stage module file {str(path)!r} does not exist; "
            "give a path to a .py file or a module name"
        )
    name = f"worker_stage_module_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"stage module file {str(path)!r} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ConfigurationError(
            f"stage module {str(path)!r} failed to import: {type(error).__name__}: {error}"
        ) from error
    return module


# ---------------------------------------------------------------- the map


def parse_stage_map(text: str) -> dict[str, StageEntry]:
    """Read a stage map from JSON text, or from the JSON file that ``text`` names."""
    source = "the stage map"
    stripped = text.strip()
    looks_like_json = stripped[:1] in ("{", "[", '"') or stripped[:1].isdigit()
    if not looks_like_json:
        path = Path(stripped)
        if not path.is_file():
            raise ConfigurationError(
                f"stage map {stripped!r} is neither a JSON object nor a readable file"
            )
        source = f"stage map file {stripped!r}"
        stripped = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigurationError(
            f"{source} must be a JSON object mapping stage to function, not {type(raw).__name__}"
        )
    return {stage: _parse_entry(stage, value) for stage, value in raw.items()}


def _parse_entry(stage: str, value: Any) -> StageEntry:
    if isinstance(value, str) and value:
        return StageEntry(value)
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"stage {stage!r} in the stage map maps to {value!r}; expected a function "
            'name or an object like {"function": "name", "kwargs": {...}}'
        )
    unknown = sorted(set(value) - MAP_ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"stage {stage!r} in the stage map has unknown keys {unknown}; "
            f"accepted keys are {sorted(MAP_ENTRY_KEYS)}"
        )
    function = value.get("function")
    if not isinstance(function, str) or not function:
        raise ConfigurationError(
            f'stage {stage!r} in the stage map needs a "function" string, got {function!r}'
        )
    kwargs = value.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f'stage {stage!r}: "kwargs" must be a JSON object, got {kwargs!r}')
    return StageEntry(
        function,
        kwargs,
        _positive_seconds(stage, "timeout", value.get("timeout")),
        _positive_seconds(stage, "leaseSeconds", value.get("leaseSeconds")),
    )


def _positive_seconds(stage: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(
            f"stage {stage!r}: {key!r} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def resolve_function(reference: str) -> StageCallable:
    """Find a function by registered name or ``module:function``; raise if absent."""
    if ":" not in reference:
        function = _functions.get(reference)
        if function is None:
            known = ", ".join(sorted(_functions)) or "none"
            raise LookupError(
                f"no stage function is registered as {reference!r} (registered: {known}); "
                "use a registered name or module:function"
            )
        return function
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise LookupError(
            f"module {module_name!r} of {reference!r} failed to import: "
            f"{type(error).__name__}: {error}"
        ) from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise LookupError(f"module {module_name!r} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


def check_kwargs(function: StageCallable, kwargs: Mapping[str, Any]) -> None:
    """Fail if ``function(item, **kwargs)`` would be refused for its arguments."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(object(), **kwargs)
    except TypeError as error:
        raise LookupError(
            f"its parameters do not accept the item and {dict(kwargs)}: {error}"
        ) from error


def build_stages(
    names: Iterable[str] | None,
    entries: Mapping[str, StageEntry],
    default_timeout: float | None = None,
) -> tuple[list[Stage], dict[str, str]]:
    """Look up the function of each stage, in order.

    Returns the usable stages and, for each stage that cannot run, why: it is
    not mapped, or its function cannot be found or does not take the arguments.
    """
    mapping: dict[str, StageEntry] = {
        stage: StageEntry(function) for stage, function in _defaults.items()
    }
    mapping.update(entries)
    order = list(names) if names is not None else list(mapping)
    stages: list[Stage] = []
    skipped: dict[str, str] = {}
    for name in order:
        entry = mapping.get(name)
        if entry is None:
            skipped[name] = "no function is mapped to this stage"
            continue
        try:
            function = resolve_function(entry.function)
            check_kwargs(function, entry.kwargs)
        except LookupError as error:
            skipped[name] = f"function {entry.function!r}: {error}"
            continue
        timeout = entry.timeout if entry.timeout is not None else default_timeout
        stages.append(
            Stage(name, function, entry.function, entry.kwargs, timeout, entry.lease_seconds)
        )
    return stages, skipped
