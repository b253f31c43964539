"""The report as a list of blocks (heading, paragraph, list, table, image), rendered to Markdown and to a
self-contained HTML page (inline CSS, PNGs embedded as base64 data URIs: it opens offline and can be mailed as
one file). One list of blocks for both formats, so they always say the same thing.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Doc", "to_html", "to_markdown"]


@dataclass
class Doc:
    """Report content as blocks, rendered to Markdown and HTML by the functions below."""

    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def image(self, path: Path, caption: str, wide: bool = False) -> None:
        self.blocks.append(("image", path, caption, wide))


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Doc) -> str:
    """Markdown text of a document; images are relative links (PNG next to report.md)."""
    out: list[str] = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "paragraph":
            out.append(block[1])
        elif kind == "bullets":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "image":
            out.append(f"![{block[2]}]({block[1].name})\n\n*{block[2]}*")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f3f8; }
tr:nth-child(even) td { background: #fafafa; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; max-width: 520px; }
figure.wide { display: block; margin: .5em 0; }
figure.wide img { max-width: 100%; width: 100%; }
figure.wide figcaption { max-width: none; }
"""


def _html_image(path: Path, caption: str, wide: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    css = ' class="wide"' if wide else ""
    return f'<figure{css}><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def to_html(doc: Doc, title: str) -> str:
    """A self-contained HTML page of a document (inline CSS, images as base64 data URIs)."""
    body: list[str] = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "paragraph":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "bullets":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "image":
            body.append(_html_image(block[1], block[2], block[3]))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
