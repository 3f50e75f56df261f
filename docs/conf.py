"""Sphinx configuration of hpcnet's documentation site.

Build (from the repository root; CI builds it in scripts/test.sh, warnings as errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Pages are MyST Markdown. The API reference (api.md) is generated from the docstrings
(Google style) by autosummary, recursively over the ``hpcnet`` package, so a module
added, moved or renamed appears without editing any page. The ``train`` flag table
(cli.md) is generated from the declared options (hpcnet.options) by the local
extension in _ext/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the hpcnet of this checkout, installed or not

import hpcnet  # noqa: E402

project = "hpcnet"
author = "the hpcnet developers"
copyright = "hpcnet developers"
version = release = hpcnet.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "hpcnet_flags",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST: ``{include}`` of the measured figures in ../benchmarks, anchors for ## and ###
# headings so pages can link to sections (page.md#a-heading).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference. autosummary writes one page per module (docs/_autosummary, made at build
# time, not committed) from _templates/autosummary/module.rst, which lists every
# submodule, the ``_``-prefixed implementation files too (``hpcnet.data._format_write``
# holds ``write_dataset``, which ``hpcnet.data.format`` re-exports): nothing is left out.
# ``ignore-module-all``: an object is documented once, in the module that defines it,
# not again in every module that re-exports it in ``__all__``.
autosummary_generate = True
# made afresh at every build: a page left from a module since moved or renamed would be
# an orphan (a warning, so an error under -W)
shutil.rmtree(Path(__file__).with_name("_autosummary"), ignore_errors=True)
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "ignore-module-all": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# hpcnet.nn.zoo lists its models as "Models:" entries, written like "Args:"
napoleon_custom_sections = [("Models", "params_style")]

# flags and commands in prose and in generated help text keep their "--" (no en dashes)
smartquotes = False

html_theme = "furo"
html_title = f"hpcnet {release}"
