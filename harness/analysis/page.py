"""Self-contained report pages: one HTML file to open or mail (tables, plots embedded, the
exact command, machine facts, cost profile) and the same as markdown to paste into a ticket.

A page is a list of sections, each a heading with preformatted text (tables as the terminal
prints them) and optional plots. Nothing here computes a figure: callers pass text that
`harness.analysis.report` and friends already made.
"""

from __future__ import annotations

import base64
import html
import platform
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Section:
    heading: str
    text: str = ""  # preformatted: tables and lists as the terminal shows them
    plots: tuple[Path, ...] = field(default_factory=tuple)


def machine_facts() -> str:
    """One line about where the figures were measured."""
    import os

    return (
        f"{platform.node()}: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )


def write(
    directory: Path,
    name: str,
    title: str,
    sections: Sequence[Section],
    command: Sequence[str],
    costs: str | None = None,
) -> tuple[Path, Path]:
    """`name`.html and `name`.md in `directory`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    facts = [f"command: {shlex.join(command)}", f"machine: {machine_facts()}"]
    if costs:
        facts.append(f"cost profile: {costs}")
    page = directory / f"{name}.html"
    page.write_text(_html(title, sections, facts), encoding="utf-8")
    text = directory / f"{name}.md"
    text.write_text(_markdown(title, sections, facts, directory), encoding="utf-8")
    return page, text


def _html(title: str, sections: Sequence[Section], facts: Sequence[str]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", "<ul>"]
    body += [f"<li><code>{html.escape(fact)}</code></li>" for fact in facts]
    body.append("</ul>")
    for section in sections:
        body.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            body.append(f"<pre>{html.escape(section.text)}</pre>")
        for plot in section.plots:
            if plot.is_file():
                data = base64.b64encode(plot.read_bytes()).decode("ascii")
                alt = html.escape(plot.stem.replace("_", " "))
                body.append(f'<p><img alt="{alt}" src="data:image/png;base64,{data}"></p>')
    style = (
        "body{font-family:sans-serif;max-width:75rem;margin:2rem auto;padding:0 1rem}"
        "pre{background:#f6f6f6;padding:.8rem;overflow-x:auto;font-size:.85rem}"
        "img{max-width:100%}code{font-size:.85rem}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _markdown(
    title: str, sections: Sequence[Section], facts: Sequence[str], directory: Path
) -> str:
    out = [f"# {title}", ""]
    out += [f"- `{fact}`" for fact in facts]
    for section in sections:
        out += ["", f"## {section.heading}", ""]
        if section.text:
            out += ["```", section.text, "```"]
        for plot in section.plots:
            if plot.is_file():
                link = plot.relative_to(directory) if plot.is_relative_to(directory) else plot
                out.append(f"![{plot.stem.replace('_', ' ')}]({link})")
    return "\n".join(out) + "\n"
