"""Import the user's Dispatcher from "module:attribute"."""

from __future__ import annotations

import importlib
import sys

from dispatchbox.dispatcher import Dispatcher
from dispatchbox.errors import ConfigurationError


def load_dispatcher(
    ref: str, extra_path: tuple[str, ...] = (), *, routes_file: str | None = None
) -> Dispatcher:
    """The app's Dispatcher, with the routes of ``routes_file`` (``--config``) added."""
    for entry in reversed(extra_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--app must look like module:attribute, got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, Dispatcher):
        raise ConfigurationError(
            f"{ref} is a {type(target).__name__}, not a dispatchbox.Dispatcher"
        )
    if routes_file is not None:
        from dispatchbox.destinations.config import apply_file

        apply_file(target, routes_file)
    return target
