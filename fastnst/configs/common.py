"""Helpers shared by the configs: parsing `file.py:key=value,flag` arguments."""

from __future__ import annotations


def parse_arg(arg: str | None, **defaults):
    """Parses 'runlocal,style=mosaic' into a dict, typed like `defaults`; unknown keys fail."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
        kind = type(defaults[key])
        out[key] = (value.lower() in ("", "1", "true", "yes")) if kind is bool else kind(value)
    return out
