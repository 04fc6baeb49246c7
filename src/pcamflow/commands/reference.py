"""Writes the README's command table from the argument parser itself, so it cannot drift.

Run ``python -m pcamflow.commands.reference README.md`` to rewrite the table between its two
markers in place; a test checks the file is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["BEGIN", "END", "command_table", "update"]

BEGIN = ("<!-- begin: command table, written by "
         "`python -m pcamflow.commands.reference README.md` -->")
END = "<!-- end: command table -->"


def _metavar(action: argparse.Action) -> str:
    if action.metavar:
        return str(action.metavar)
    if action.choices and not action.option_strings:
        return "{" + ",".join(map(str, action.choices)) + "}"
    if action.type is int or getattr(action.type, "__name__", "") == "_count":
        return "N"
    return str(action.dest).upper().replace("-", "_")


def _option(action: argparse.Action) -> str:
    """``--name`` or ``--name VALUE`` (``VALUE...`` when it takes several)."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return flag
    value = _metavar(action)
    if action.choices is not None:
        value = "{" + ",".join(map(str, action.choices)) + "}"
    return f"{flag} {value}..." if action.nargs in ("+", "*") else f"{flag} {value}"


def _synopsis(prog: str, parser: argparse.ArgumentParser) -> str:
    words = [prog]
    options = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            options.append(f"[{_option(action)}]")
        else:
            name = _metavar(action)
            words.append(f"{name}..." if action.nargs in ("+", "*") else name)
    return " ".join(words + options)


def _default(action: argparse.Action) -> str | None:
    default = action.default
    if action.nargs == 0 or default is None or default is argparse.SUPPRESS:
        return None
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default)


def _explained(action: argparse.Action) -> str:
    text = f"`{_option(action)}`: {action.help or ''}".rstrip(": ")
    default = _default(action)
    if default is not None and "default" not in (action.help or ""):
        text += f" (default {default})"
    return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def command_table(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown table of every sub-command: its synopsis, what it does, its options."""
    from pcamflow.cli import build_parser

    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    lines = ["| command | what it does |", "| --- | --- |"]
    for name, command in sub.choices.items():
        options = [a for a in command._actions
                   if a.option_strings and not isinstance(a, argparse._HelpAction)]
        what = (helps.get(name) or "").rstrip(".")
        if options:
            what += ". " + "; ".join(_explained(a) for a in options)
        synopsis = _synopsis(f"pcamflow {name}", command)
        lines.append(f"| `{_cell(synopsis)}` | {_cell(what)} |")
    common = [a for a in parser._actions
              if a.option_strings and not isinstance(a, argparse._HelpAction)]
    lines.append(
        f"| `pcamflow {' '.join(f'[{_option(a)}]' for a in common)} COMMAND ...` | "
        + _cell("before any command: " + "; ".join(_explained(a) for a in common)) + " |"
    )
    return "\n".join(lines) + "\n"


def update(path: Path, table: str | None = None) -> bool:
    """Put ``table`` (default: :func:`command_table`) between the markers in ``path``.

    Returns:
        Whether the file changed.

    Raises:
        ValueError: the file lacks the markers.
    """
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no command table markers ({BEGIN} ... {END})")
    new = text[: start + len(BEGIN)] + "\n" + (table or command_table()) + text[end:]
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


if __name__ == "__main__":  # pragma: no cover
    for name in sys.argv[1:] or ["README.md"]:
        print(f"{name}: {'rewritten' if update(Path(name)) else 'current'}")
