"""Report pages: sections of Markdown text and figures, rendered as report.md and a self-contained report.html.

In:  `Section`s (an id, a title, Markdown text, `Figure`s holding PNG bytes).
Out: Markdown (figures named, pointing at the HTML) and one HTML file with every figure embedded as a
     base64 ``data:`` URI, an inline style sheet and no script or external asset.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

__all__ = ["Figure", "Section", "md_table", "render_html", "render_markdown_page"]

STYLE = ("body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
         "th{background:#f3f3f3}pre{background:#f5f5f5;padding:1em;overflow:auto}"
         "figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}"
         "figcaption{color:#555;font-size:.9em}section{margin-bottom:2.5em}")


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Section:
    id: str
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)


def md_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown_page(title: str, intro: str, sections: list[Section]) -> str:
    parts = [f"# {title}", intro] if intro else [f"# {title}"]
    for section in sections:
        body = [f"## {section.title}"]
        if section.text:
            body.append(section.text)
        body += [f"*Figure: {figure.caption} (see report.html)*" for figure in section.figures]
        parts.append("\n\n".join(body))
    return "\n\n".join(parts) + "\n"


def _markdown(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def render_html(title: str, intro: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", _markdown(intro) if intro else ""]
    for section in sections:
        body.append(f'<section id="{html.escape(section.id)}"><h2>{html.escape(section.title)}</h2>')
        if section.text:
            body.append(_markdown(section.text))
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            caption = html.escape(figure.caption)
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                        f"<figcaption>{caption}</figcaption></figure>")
        body.append("</section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
