"""Routing rules: the first ``[[rules]]`` entry whose every condition holds decides a series' fate.

Pattern language (documented in the README):

- ``"<1.0"``, ``"<=1.5"``, ``">0.2"``, ``">=3"``, ``"==1.5"``: numeric comparison;
- a string containing regular-expression syntax (any of ``^$*+?()[]{}|\\``): ``re.search``;
- any other string or number: exact equality (UIDs with dots stay exact);
- a leading ``!`` negates any of the above (``ImageType = "!DERIVED"``);
- a list: every item must hold (``ImageType = ["ORIGINAL", "PRIMARY"]``).

Multi-valued attributes (ImageType) hold when any single value, or the backslash-joined whole,
matches. A missing attribute never matches, except under negation. ``CallingAETitle`` matches the
AE title that sent the series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from dicomnode.jobs import RoutingDecision
from dicomnode.rule_patterns import CALLING_AE_KEY, COMPARISON, OPERATORS, is_regex


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value.decode(errors="replace") if isinstance(value, bytes) else value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _holds(pattern: object, value: object) -> bool:
    """Does one (non-list) pattern hold for an attribute value (None when absent)?"""
    if isinstance(pattern, str) and pattern.startswith("!"):
        return not _holds(pattern[1:], value)
    values = _values(value)
    if not values:
        return False
    if isinstance(pattern, bool):
        pattern = str(pattern)
    if isinstance(pattern, int | float):
        return any(_as_float(v) == float(pattern) for v in values)
    comparison = COMPARISON.match(pattern)
    if comparison:
        op, threshold = OPERATORS[comparison.group(1)], float(comparison.group(2))
        numbers = [_as_float(v) for v in values]
        return any(n is not None and op(n, threshold) for n in numbers)
    candidates = values + (["\\".join(values)] if len(values) > 1 else [])
    if is_regex(pattern):
        regex = re.compile(pattern)
        return any(regex.search(c) for c in candidates)
    return any(c.strip() == pattern for c in candidates)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class RuleLike:
    """Structural type of ``dicomnode.config.Rule`` (kept loose so tests can pass plain rules)."""

    name: str
    match: Mapping[str, object]
    action: str
    destinations: Sequence[str]
    profile: str | None


def rule_matches(rule: RuleLike, attributes: Mapping[str, object]) -> bool:
    for key, pattern in rule.match.items():
        value = attributes.get(key)
        patterns = pattern if isinstance(pattern, list) else [pattern]
        if not all(_holds(item, value) for item in patterns):
            return False
    return True


def route(rules: Sequence[RuleLike], attributes: Mapping[str, object]) -> RoutingDecision:
    for rule in rules:
        if rule_matches(rule, attributes):
            return RoutingDecision(
                rule.name,
                rule.action,
                tuple(rule.destinations),
                rule.profile,
                bool(getattr(rule, "forward_originals", False)),
            )
    return RoutingDecision(None, None)


def attributes_for_routing(dataset: object, calling_ae: str | None, keys: Iterable[str]) -> dict:
    """Pull the attributes the rules look at out of a pydicom dataset (header only)."""
    found: dict[str, object] = {CALLING_AE_KEY: calling_ae}
    for key in keys:
        if key == CALLING_AE_KEY or keyword_for_tag(tag_for_keyword(key) or 0) != key:
            continue
        value = getattr(dataset, key, None)
        if value is not None:
            found[key] = list(value) if _is_multi(value) else value
    return found


def _is_multi(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes)


def rule_keys(rules: Sequence[RuleLike]) -> set[str]:
    return {key for rule in rules for key in rule.match}
