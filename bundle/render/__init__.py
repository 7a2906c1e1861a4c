"""Renderers of a verified bundle: terminal text and the HTML appendix."""

from bundle.render.html import render_html
from bundle.render.text import summary

__all__ = ["render_html", "summary"]
