"""Finding and filling the ``{{table:NAME}}`` and ``{{plot:NAME}}`` placeholders of a
template (the syntax is in the package docstring). Everything outside the placeholders is
copied verbatim."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
PLACEHOLDER_BODY = re.compile(r"\s*(?P<kind>[a-z]+):(?P<name>[a-z0-9][a-z0-9-]*)\s*")
STRAY_BRACES = re.compile(r"\{\{|\}\}")


class TemplateError(Exception):
    """The template has placeholders that cannot be filled; the message lists them all."""


@dataclass(frozen=True)
class Placeholder:
    kind: str
    name: str
    start: int
    end: int
    line: int


def find_placeholders(text: str, known_names: Mapping[str, set[str]]) -> list[Placeholder]:
    """Every placeholder of the template, in order. Raises TemplateError naming every
    unknown kind or name and every stray ``{{`` or ``}}``."""
    placeholders, problems = [], []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        problems += stray_brace_problems(text, position, match.start())
        position = match.end()
        line = line_number(text, match.start())
        body = PLACEHOLDER_BODY.fullmatch(match[1])
        if body is None:
            problems.append(f"line {line}: {match[0]!r} is not {{{{KIND:NAME}}}}")
        elif body["kind"] not in known_names:
            problems.append(f"line {line}: {match[0]!r}: unknown kind {body['kind']!r} "
                            f"(known: {', '.join(sorted(known_names))})")
        elif body["name"] not in known_names[body["kind"]]:
            problems.append(f"line {line}: {match[0]!r}: unknown {body['kind']} {body['name']!r} "
                            f"(known: {', '.join(sorted(known_names[body['kind']]))})")
        else:
            placeholders.append(Placeholder(body["kind"], body["name"], match.start(), match.end(), line))
    problems += stray_brace_problems(text, position, len(text))
    if problems:
        raise TemplateError("\n".join(problems))
    return placeholders


def stray_brace_problems(text: str, start: int, end: int) -> list[str]:
    return [f"line {line_number(text, match.start())}: stray {match[0]!r} (unclosed or unopened placeholder?)"
            for match in STRAY_BRACES.finditer(text, start, end)]


def line_number(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def expand(text: str, placeholders: list[Placeholder], replacement: Callable[[Placeholder], str]) -> str:
    """The template with each placeholder replaced by ``replacement(placeholder)``."""
    pieces, position = [], 0
    for placeholder in placeholders:
        pieces += [text[position:placeholder.start], replacement(placeholder)]
        position = placeholder.end
    pieces.append(text[position:])
    return "".join(pieces)
