"""A self-contained HTML report: the summaries, tables and figures of one analysis
(figures embedded as base64 PNG data, so the file can be mailed or opened offline)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #4c72b0; padding-bottom: .3em; }
h2 { margin-top: 1.8em; color: #334; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 12.5px; border-radius: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1em; }
th, td { border: 1px solid #ccd; padding: 3px 8px; text-align: right; }
th { background: #eef1f6; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #dde; }
figcaption { color: #555; font-size: 13px; }
.meta { color: #555; }
"""


def _table(frame: pd.DataFrame) -> str:
    # the index name ('icc', 'r2') would take a header row of its own; the heading says it
    return frame.to_html(float_format=lambda v: f"{v:.4g}", na_rep="", border=0, index_names=False)


def write_report(path: str | Path, title: str, meta: dict[str, str], sections: list[tuple[str, object]],
                 figures: list[tuple[str, Path]]) -> Path:
    """Write ``report.html``.

    Parameters
    ----------
    sections : list of (heading, content)
        ``content`` is text (shown preformatted) or a DataFrame (shown as a table).
    figures : list of (caption, PNG path)
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", "<p class='meta'>"]
    parts.append("<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in meta.items()))
    parts.append("</p>")
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, pd.DataFrame):
            parts.append(_table(content))
        else:
            parts.append(f"<pre>{html.escape(str(content))}</pre>")
    if figures:
        parts.append("<h2>Figures</h2>")
    for caption, png in figures:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
