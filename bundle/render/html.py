"""The self-contained HTML postmortem appendix (jinja2, autoescape on, no external requests)."""

from __future__ import annotations

import shlex

import jinja2

from bundle._resources import data_dir
from bundle.archive import Bundle
from bundle.errors import RenderError
from bundle.render.view import BAD_NEIGHBOR_STATES, build_view, missing_capabilities

TEMPLATE = "appendix.html.j2"


def _environment() -> jinja2.Environment:
    try:
        folder = data_dir("templates")
    except FileNotFoundError as exc:
        raise RenderError(str(exc)) from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,  # everything from the system under diagnosis is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shjoin"] = shlex.join
    return env


def render_html(bundle: Bundle) -> str:
    try:
        template = _environment().get_template(TEMPLATE)
        return template.render(view=build_view(bundle), bad_states=BAD_NEIGHBOR_STATES,
                               missing_caps=missing_capabilities)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {TEMPLATE}: {exc}") from None
