"""The grammar of a rule's ``match`` values, shared by the configuration (which checks it at load
time) and the routing (which applies it), so that neither imports the other's stage.

See ``dicomnode.receive.routing`` for the language itself.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

from pydicom.datadict import tag_for_keyword

CALLING_AE_KEY = "CallingAETitle"
COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
_REGEX_CHARS = set("^$*+?()[]{}|\\")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def validate_pattern(key: str, pattern: object) -> str | None:
    """Return a problem description, or None when ``key = pattern`` is usable."""
    if key != CALLING_AE_KEY and tag_for_keyword(key) is None:
        return "not a DICOM attribute keyword (nor CallingAETitle)"
    if isinstance(pattern, str):
        body = pattern[1:] if pattern.startswith("!") else pattern
        if COMPARISON.match(body) is None and is_regex(body):
            try:
                re.compile(body)
            except re.error as exc:
                return f"invalid regular expression {body!r}: {exc}"
    return None


def is_regex(text: str) -> bool:
    return any(ch in _REGEX_CHARS for ch in text)
