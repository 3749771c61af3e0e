"""Settings from JSON (a rule's slice of config) into the dataclass of the step that reads them:
an unknown key or a wrong type is named, not a traceback three calls later."""

from __future__ import annotations

import json
from dataclasses import fields

from .errors import ScencodeError

_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def parse(cls, values: dict | str | None, validate: bool = True):
    """``cls(**values)`` from a dict or JSON text, naming any unknown key or wrong type, then its
    ``validate()`` (``validate=False``: the caller completes it first)."""
    values = json.loads(values) if isinstance(values, str) else (values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ScencodeError(
            f"unknown {cls.__name__} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    check_types(cls, values)
    params = cls(**values)
    if validate and hasattr(params, "validate"):
        params.validate()
    return params


def check_types(cls, values: dict) -> None:
    annotations = {f.name: str(f.type) for f in fields(cls)}
    for key, value in values.items():
        allowed = [t.strip() for t in annotations[key].split("|")]
        if not all(t in _TYPES for t in allowed):
            continue  # containers and classes: the step checks them
        ok = any(isinstance(value, _TYPES[t]) for t in allowed) and not (
            isinstance(value, bool) and "bool" not in allowed
        )
        if not ok:
            raise ScencodeError(f"{cls.__name__} setting {key}={value!r}: expected {annotations[key]}")


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)
