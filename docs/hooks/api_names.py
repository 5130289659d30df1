"""MkDocs hook: `::: paradl_tf.NAME` on the API page documents a public name of `paradl_tf`.

The package exports its names lazily (`paradl_tf._EXPORTS`: name -> module), which static analysis cannot
follow, so each directive is rewritten to the module that defines the name. The build fails when a public
name (`paradl_tf.__all__`) is missing from the page, or the page names one that is not public. `Datasets` and
`Job` (returned by `build_dataset` and `prepare`) are documented from the module of the function that returns
them. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re

import paradl_tf

RETURNED = {"Datasets": "build_dataset", "Job": "prepare"}
DIRECTIVE = re.compile(r"^::: paradl_tf\.(\w+)$", re.M)


def _module(name: str) -> str:
    return f"paradl_tf.{paradl_tf._EXPORTS[RETURNED.get(name, name)]}"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "api.md":
        return markdown
    named = DIRECTIVE.findall(markdown)
    unknown = sorted(set(named) - set(paradl_tf.__all__) - set(RETURNED))
    missing = sorted(set(paradl_tf.__all__) - set(named))
    if unknown or missing:
        raise ValueError(f"api.md: not public: {unknown}; public but not documented: {missing}")
    return DIRECTIVE.sub(lambda m: f"::: {_module(m.group(1))}.{m.group(1)}", markdown)
