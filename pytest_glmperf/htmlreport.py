"""report.html: the Markdown report with its charts inline, one file that opens offline.

No external assets (no scripts, fonts or style sheets from the network): CI artefact viewers
and air-gapped GPU hosts open it as is. The Markdown is the subset ``report.py`` writes
(headings, paragraphs, ``-`` lists, GitHub pipe tables, ``**bold**``, ``*em*``, `` `code` ``,
links and images), converted here so no Markdown package is needed. An image whose target
names a chart (``![capacity](capacity.svg)``) is replaced by that chart's SVG; charts not
referenced are appended under "Charts".
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["markdown_to_html", "write_html"]

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #666; font-size: 12px; }
"""

_IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")
_XML_PROLOGUE = re.compile(r"<\?xml[^>]*\?>\s*|<!DOCTYPE[^>]*>\s*", re.IGNORECASE)


def write_html(report_dir: Path, markdown_text: str, svgs: Mapping[str, str]) -> Path:
    """Write ``report_dir/report.html`` (replaced atomically) and return its path.

    A link to a chart (``[timeline](timeline-x-c8.svg)``) jumps to that chart inside the page."""
    body, used = markdown_to_html(_link_charts(markdown_text, svgs), svgs)
    rest = [name for name in svgs if name not in used]
    if rest:
        body += "\n<h2>Charts</h2>\n" + "\n".join(_figure(name, svgs[name], name) for name in rest)
    title = next((line[2:].strip() for line in markdown_text.splitlines() if line.startswith("# ")),
                 "pytest-glmperf report")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def markdown_to_html(text: str, svgs: Mapping[str, str] | None = None) -> tuple[str, set[str]]:
    """HTML for the Markdown subset above, and the names of the charts it placed inline."""
    svgs = svgs or {}
    out: list[str] = []
    used: set[str] = set()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
        elif _is_table(lines, i):
            i = _table(lines, i, out)
        elif line.lstrip().startswith(("- ", "* ")):
            i = _list(lines, i, out)
        elif match := _HEADING.match(line):
            level = len(match.group(1))
            out.append(f"<h{level}>{_inline(match.group(2))}</h{level}>")
            i += 1
        elif (match := _IMAGE_LINE.match(line.strip())) and (name := _chart(match.group("src"), svgs)):
            used.add(name)
            out.append(_figure(match.group("alt") or name, svgs[name], name))
            i += 1
        else:
            i = _paragraph(lines, i, out)
    return "\n".join(out), used


def _chart(src: str, svgs: Mapping[str, str]) -> str | None:
    """The chart an image target names: 'capacity.svg', 'charts/capacity.svg' or 'capacity'."""
    name = src.rsplit("/", 1)[-1]
    for candidate in (src, name, name.removesuffix(".svg")):
        if candidate in svgs:
            return candidate
    return None


def _figure(caption: str, svg: str, name: str) -> str:
    return (f"<figure id=\"{_anchor(name)}\">\n{_XML_PROLOGUE.sub('', svg).strip()}\n"
            f"<figcaption>{html.escape(caption)}</figcaption>\n</figure>")


def _anchor(name: str) -> str:
    return "chart-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name.removesuffix(".svg"))


def _link_charts(text: str, svgs: Mapping[str, str]) -> str:
    """Links (not images) whose target is one of the page's charts point at it within the page."""
    def inside(match: re.Match[str]) -> str:
        name = _chart(match.group(2), svgs)
        return f"[{match.group(1)}](#{_anchor(name)})" if name else match.group(0)
    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", inside, text)


def _is_table(lines: list[str], i: int) -> bool:
    return (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
            and bool(_SEPARATOR.match(lines[i + 1].strip())))


def _cells(line: str) -> list[str]:
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", text)]


def _table(lines: list[str], i: int, out: list[str]) -> int:
    head = "".join(f"<th>{_inline(cell)}</th>" for cell in _cells(lines[i]))
    rows = []
    i += 2
    while i < len(lines) and lines[i].lstrip().startswith("|"):
        rows.append("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in _cells(lines[i])) + "</tr>")
        i += 1
    out.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")
    return i


def _list(lines: list[str], i: int, out: list[str]) -> int:
    items = []
    while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
        items.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
        i += 1
    out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
    return i


def _paragraph(lines: list[str], i: int, out: list[str]) -> int:
    text = []
    while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
        text.append(lines[i].strip())
        i += 1
    if not text:  # a line no other rule took
        text.append(lines[i].strip())
        i += 1
    out.append(f"<p>{_inline(' '.join(text))}</p>")
    return i


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i].lstrip()
    return bool(_HEADING.match(line)) or line.startswith(("- ", "* ")) or _is_table(lines, i)


def _inline(text: str) -> str:
    """Escape, then the inline marks: code first so nothing inside it is touched."""
    parts = re.split(r"(`[^`]+`)", text)
    converted = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            converted.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False).replace("&lt;br&gt;", "<br>")
        part = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", r'<img alt="\1" src="\2">', part)
        part = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', part)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        converted.append(part)
    return "".join(converted)
