"""Request parameters parsed strictly: anything unknown, repeated or malformed is an InputError naming it."""

from __future__ import annotations

import math
import re

from distgan.runtime import InputError

_INTEGER = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class Query:
    """The parameters of one request, each given at most once, from a fixed list."""

    def __init__(self, items: list[tuple[str, str]], allowed: tuple[str, ...]):
        self.values: dict[str, str] = {}
        for key, value in items:
            if key not in allowed:
                raise InputError(key or "query", f"unknown parameter; valid: {', '.join(allowed)}")
            if key in self.values:
                raise InputError(key, "given more than once")
            self.values[key] = value

    def text(self, field: str, default: str | None = None) -> str | None:
        value = self.values.get(field)
        if value is not None and not value:
            raise InputError(field, "empty; leave it out for the default")
        return default if value is None else value

    def integer(self, field: str, default: int, low: int, high: int) -> int:
        """An integer in low..high, written in plain digits."""
        value = self.text(field)
        if value is None:
            return default
        if not _INTEGER.fullmatch(value):
            raise InputError(field, f"{value!r} is not an integer; valid: {low}..{high}")
        if not low <= int(value) <= high:
            raise InputError(field, f"{int(value)} is out of range; valid: {low}..{high}")
        return int(value)

    def number(self, field: str, default: float, low: float, high: float) -> float:
        value = self.text(field)
        if value is None:
            return default
        if not _NUMBER.fullmatch(value) or not math.isfinite(float(value)):
            raise InputError(field, f"{value!r} is not a finite number; valid: {low:g}..{high:g}")
        if not low <= float(value) <= high:
            raise InputError(field, f"{value} is out of range; valid: {low:g}..{high:g}")
        return float(value)

    def choice(self, field: str, default: str, options: tuple[str, ...]) -> str:
        value = self.text(field, default)
        if value not in options:
            raise InputError(field, f"{value!r} is not one of {', '.join(options)}")
        return value
