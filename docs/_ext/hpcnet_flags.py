"""``hpcnet-train-flags``: the ``train`` flag table, generated from the declared options.

Each row is one :class:`hpcnet.options.Option` (flag, ``section.name`` key, type,
default, help, allowed values, who declared it), as ``train --help`` prints them, so the
table in the docs cannot drift from the code. ``hpcnet.algos`` is imported first: the
built-in algorithms declare their own options when they register. One table per TOML
section, in declaration order.

Usage in a MyST page::

    ```{hpcnet-train-flags}
    ```
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive


def _rows() -> dict[str, list[tuple[str, str, str, str, str]]]:
    """Section -> [(flag, TOML key, type, default, meaning)], sections in declaration order."""
    import hpcnet.algos  # noqa: F401  every built-in algorithm declares its options
    from hpcnet import options

    by_section: dict[str, list[tuple[str, str, str, str, str]]] = {
        s: [] for s in options.sections()
    }
    for o in options.options():
        flag = o.flag
        if o.type is bool:  # argparse.BooleanOptionalAction: --flag / --no-flag
            flag = f"{flag}, --no-{flag[2:]}"
            shown = "on" if o.default else "off"
        elif o.type is tuple:  # an array: config files only
            shown = "[]"
        else:
            shown = repr(o.default) if o.default == "" else str(o.default)
        meaning = o.help
        if o.choices:
            meaning += f" ({' | '.join(map(str, o.choices))})"
        owner = options.owner(o.key)
        if owner.startswith("algorithm "):
            meaning += f" [{owner}]"
        kind = "array" if o.type is tuple else o.type.__name__
        by_section[o.section].append((flag, o.key, kind, shown, meaning))
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
