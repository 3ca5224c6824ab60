"""`--variant TAG:key=value,key=value` of the bench scripts: a named set of trainer overrides.

A comma starts a new override only where the next piece holds an `=`, so a
value that is itself a comma list stays whole:
`diffaug:aug.policy=color,translation,cutout,aug.p=1` is two overrides.
"""

from __future__ import annotations


def split_overrides(text: str) -> list[str]:
    """"aug.policy=color,cutout,aug.p=1" -> ["aug.policy=color,cutout", "aug.p=1"]: a piece with no `=`
    continues the previous value (a list value such as a policy), one with `=` starts a new override."""
    items: list[str] = []
    for piece in text.split(","):
        if "=" in piece or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece
    items = [item for item in items if item]
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
    return items


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """"TAG:key=value,key=value" -> (TAG, overrides); "TAG" alone is the base config unchanged."""
    tag, _, rest = spec.partition(":")
    if not tag or not all(c.isalnum() or c in "-_." for c in tag):
        raise ValueError(f"variant {spec!r}: its tag must be a non-empty name of letters, digits, - _ . "
                         "(it names the run directory)")
    return tag, split_overrides(rest)
