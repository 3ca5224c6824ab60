"""`prepare-report.json`: what prepare did with every file it did not write as-is, and the one error that
lists every bad file at once.

An entry is `{"file", "reason", "action"}`; actions: `refused` (a bad file: the run stops unless
--skip-bad), `skipped` (not written: bad under --skip-bad, hidden, not an image, a dropped duplicate),
`kept` (written, but worth knowing: a duplicate, one across train and test above all). Conversions
(16-bit, EXIF, alpha, ...) are counted per kind with a few example files, not listed one by one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distgan.data.images import Kinds

REPORT_NAME = "prepare-report.json"
EXAMPLES = 10  # example files per converted kind


@dataclass
class PrepareReport:
    source: str
    entries: list[dict] = field(default_factory=list)
    converted: dict[str, dict] = field(default_factory=dict)  # kind -> {"count", "examples"}
    aspect_ratios: dict[str, int] = field(default_factory=dict)
    center_crop_keeps: float = 1.0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, file: str, reason: str, action: str) -> None:
        self.entries.append({"file": file, "reason": reason, "action": action})

    def count_kinds(self, files: list[str], kinds: np.ndarray, frames: np.ndarray, kept: np.ndarray) -> None:
        """Per conversion kind, how many written files had it, and a few of them."""
        for kind in Kinds:
            hits = kept[(kinds[kept] & int(kind)) != 0]
            if len(hits):
                self.converted[kind.name.lower()] = {"count": int(len(hits)),
                                                     "examples": [files[i] for i in hits[:EXAMPLES]]}
        animated = kept[frames[kept] > 1]
        if len(animated):
            self.converted["animated"]["frames_dropped"] = int((frames[animated] - 1).sum())

    def summary(self) -> dict:
        """The counts `dataset.json` carries under source.prepare_report."""
        by_action = Counter(e["action"] for e in self.entries)
        return {**self.counts, **{f"files_{a}": n for a, n in sorted(by_action.items())},
                "converted": {k: v["count"] for k, v in self.converted.items()}, "report": REPORT_NAME}

    def write(self, directory: Path) -> Path:
        """Atomic, beside dataset.json."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / REPORT_NAME
        body = {"source": self.source, "counts": self.summary(), "aspect_ratios": self.aspect_ratios,
                "center_crop_keeps": round(self.center_crop_keeps, 4), "converted": self.converted,
                "entries": self.entries}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def refusal(self, limit: int, written_to: Path | None) -> str:
        """One error naming every refused file (up to `limit`), how many there are, and what was skipped."""
        bad = [e for e in self.entries if e["action"] == "refused"]
        lines = [f"{len(bad)} bad file(s) in {self.source}; nothing was written "
                 f"(--skip-bad writes the rest and reports these):"]
        lines += [f"  {e['file']}: {e['reason']}" for e in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more")
        skipped = Counter(e["reason"] for e in self.entries if e["action"] == "skipped")
        if skipped:
            lines.append("also skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
        if written_to is not None:
            lines.append(f"every file and reason: {written_to}")
        return "\n".join(lines)
