"""Help ▸ About: versions, the shipped weights with their cards' data, and the data's terms.

Everything shown comes from :mod:`app.core.about` (read from the packages and the cards); this
dialog only lays it out, with the Qt and PySide6 versions added here (the core never imports Qt).
"""
from __future__ import annotations

import html
import re

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

from app.core.about import DATA_CREDITS, versions, weights_rows


def _markdown_bits(text: str) -> str:
    """README's ``**bold**`` and ```code``` as HTML (the credits are kept word for word)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def about_html() -> str:
    """The dialog's text: versions, one row per shipped weights card, the data credits."""
    e = html.escape
    parts = ["<h2>ferkit — facial expression recognition</h2>",
             "<p>Library, command line and this desktop app: expressions of every face in a video, a camera "
             "or a folder of images, with identity, explanations and training.</p><h3>Versions</h3><table>"]
    rows = versions() + [("Qt", qVersion()), ("PySide6", pyside_version)]
    parts += [f"<tr><td>{e(n)}</td><td>&nbsp;{e(v)}</td></tr>" for n, v in rows]
    parts.append("</table><h3>Shipped weights</h3><table border='1' cellspacing='0' cellpadding='3'>"
                 "<tr><th>name</th><th>kind</th><th>measured</th><th>trained on</th><th>how</th></tr>")
    for r in weights_rows():
        measured = "<br>".join(e(m) for m in (r.headline, r.identity) if m) or "—"
        kind = f"{r.kind} ({e(r.architecture)}, {r.classes} classes)" if r.architecture else e(r.kind)
        parts.append(f"<tr><td><b>{e(r.name)}</b></td><td>{kind}</td><td>{measured}</td>"
                     f"<td>{e(r.data) or '—'}</td><td>{e(r.trained) or '—'}</td></tr>")
    parts.append("</table><p>Each weights file has a card (<code>resources/weights/&lt;name&gt;.json</code>) and "
                 "notes (<code>&lt;name&gt;.md</code>) with every measured number.</p>")
    parts.append(f"<h3>Data and credits</h3><p>{_markdown_bits(DATA_CREDITS)}</p>")
    return "".join(parts)


class AboutDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About ferkit")
        self.resize(760, 620)
        layout = QVBoxLayout(self)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(False)
        self.text.setHtml(about_html())
        layout.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
