"""The benchmark report: rows of figures -> a Rich table for the terminal and a Markdown
section for README.md, replaced between markers on each run."""
from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Row:
    what: str
    ours: float | None
    base: float | None
    unit: str
    higher_is_better: bool = True
    floor: str = ""
    ok: bool | None = None
    paired_ratio: float | None = None  # the median of per-round ratios, when measured so

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if not self.ours or not self.base:
            return None
        return self.ours / self.base if self.higher_is_better else self.base / self.ours


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def cells(row: Row) -> list[str]:
    ratio = f"{row.ratio:.1f}x" if row.ratio else "-"
    verdict = {True: "yes", False: "NO", None: ""}[row.ok]
    return [row.what, fmt(row.ours, row.unit), fmt(row.base, row.unit), ratio,
            row.floor, verdict]


HEADERS = ["measure", "pagesync", "baseline", "ratio", "floor", "met"]


def rich_table(rows: list[Row], title: str) -> Table:
    table = Table(*HEADERS, title=title)
    for row in rows:
        c = cells(row)
        c[5] = {"yes": "[green]yes[/]", "NO": "[bold red]NO[/]"}.get(c[5], c[5])
        table.add_row(*c)
    return table


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()} "
            f"({platform.system()} {platform.release()})")


def markdown(rows: list[Row], command: str, notes: list[str]) -> str:
    lines = [START, "", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{machine()}, with `{command}`.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes] + ["", END]
    return "\n".join(lines)


def write_readme(path: Path, section: str) -> None:
    """Replace the section between the markers, or add a Benchmarks section at the end."""
    text = path.read_text(encoding="utf-8")
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Benchmarks\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def command_line() -> str:
    return "python -m bench.run" + "".join(f" {a}" for a in sys.argv[1:])
