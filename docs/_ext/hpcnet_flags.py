"""``hpcnet-train-flags``: the ``train`` flag table, generated from ``hpcnet.config.FLAGS``.

Each row comes from one entry of ``FLAGS`` (flag -> section, field, help) and from the
field's type and default in the section's dataclass, so the table in the docs is the
table ``train --help`` prints and cannot drift from it. One table per TOML section, in
the order of :class:`hpcnet.config.Config`'s fields; within a section, ``FLAGS`` order.

Usage in a MyST page::

    ```{hpcnet-train-flags}
    ```
"""

from __future__ import annotations

import dataclasses

from docutils import nodes
from docutils.parsers.rst import Directive


def _rows() -> dict[str, list[tuple[str, str, str, str, str]]]:
    """Section -> [(flag, TOML key, type, default, meaning)], sections in Config order."""
    from hpcnet import config

    sections = [f.name for f in dataclasses.fields(config.Config)]
    classes = {f.name: f.default_factory for f in dataclasses.fields(config.Config)}
    by_section: dict[str, list[tuple[str, str, str, str, str]]] = {s: [] for s in sections}
    for flag, (section, name, help_) in config.FLAGS.items():
        field = {f.name: f for f in dataclasses.fields(classes[section])}[name]
        default = field.default
        # the annotation, as argparse gets it (a string: config.py postpones annotations)
        typ = field.type if isinstance(field.type, str) else field.type.__name__
        if typ == "bool":  # argparse.BooleanOptionalAction: --flag / --no-flag
            flag = f"{flag}, --no-{flag[2:]}"
            shown = "on" if default else "off"
        else:
            shown = repr(default) if default == "" else str(default)
        by_section[section].append((flag, f"{section}.{name}", typ, shown, help_))
    return {s: rows for s, rows in by_section.items() if rows}


def _cell(content: nodes.Node | str) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    para += content if isinstance(content, nodes.Node) else nodes.Text(content)
    entry += para
    return entry


def _table(rows: list[tuple[str, str, str, str, str]]) -> nodes.table:
    header = ("flag", "TOML key", "type", "default", "meaning")
    table = nodes.table(classes=["hpcnet-flags"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in (22, 22, 8, 10, 38):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for title in header:
        row += _cell(title)
    head += row
    group += head
    body = nodes.tbody()
    for flag, key, typ, default, meaning in rows:
        row = nodes.row()
        row += _cell(nodes.literal(text=flag))
        row += _cell(nodes.literal(text=key))
        row += _cell(typ)
        row += _cell(nodes.literal(text=default))
        row += _cell(meaning)
        body += row
    group += body
    return table


class TrainFlags(Directive):
    """Emits one rubric and one table per TOML section of the ``train`` flags."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for section, rows in _rows().items():
            out.append(nodes.rubric(text=f"[{section}]"))
            out.append(_table(rows))
        return out


def setup(app):
    app.add_directive("hpcnet-train-flags", TrainFlags)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
