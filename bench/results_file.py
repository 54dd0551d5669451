"""bench/RESULTS.md: `## ` sections, each replaced only by the script (and the store) that measured it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the script that measured it (bench/README.md says which) and replaced only\n"
    "when that script measures it again; the others stay as they were.\n"
)
# bench/forward.py keeps what comes before its section and rewrites the rest: new sections go before it.
LAST_SECTION = "## Forwarding"


def split_sections(text: str) -> tuple[str, list[str]]:
    """What precedes the first `## ` heading, and each section from its heading on (stripped)."""
    preamble: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            preamble.append(line)
    return "\n".join(preamble).strip(), ["\n".join(section).strip() for section in sections]


def replace_sections(path: Path, sections: Sequence[tuple[str, str]]) -> None:
    """Each (heading prefix, text): replaces the section whose heading starts with that prefix, or is added
    before the Forwarding section (at the end if there is none). Every other section is kept as it was."""
    preamble, kept = split_sections(path.read_text(encoding="utf-8") if path.exists() else "")
    for prefix, text in sections:
        found = [index for index, section in enumerate(kept) if section.startswith(prefix)]
        if found:
            kept[found[0]] = text.strip()
            kept = [section for index, section in enumerate(kept) if index not in found[1:]]
            continue
        last = next((i for i, section in enumerate(kept) if section.startswith(LAST_SECTION)), len(kept))
        kept.insert(last, text.strip())
    parts = [preamble or HEADER.strip(), *kept]
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
