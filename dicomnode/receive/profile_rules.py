"""Which profile (contrast and field strength) a series belongs to, by the routing rules.

The node's rules (``[[rules]]``, ``dicomnode.receive.routing``) name the profile of the series
they enhance; ``dicomnode enhance`` picks its profile the same way, from ``--config``'s rules,
or without one from ``DEFAULT_RULES`` below, which are the profile rules of
``examples/dicomnode.toml`` (a test keeps the two equal). Order matters: the first rule that
holds wins, so 64 mT comes before 0.36 T and FLAIR before T2 ("T2 FLAIR" is a FLAIR).

How a series is recognised, in words:

- field: ``MagneticFieldStrength`` below 0.2 T is 64 mT, 0.2-1.0 T is 0.36 T;
- FLAIR: "flair" in SeriesDescription (not "T1 FLAIR", an inversion-recovery T1), or an
  InversionTime of 1000 ms or more (CSF nulling needs TI ~ T1_csf ln 2 = 1.4-2.8 s);
- T2: "t2" in SeriesDescription (not T2* or FLAIR), or a long TE (>= 80 ms) at a long TR
  (>= 1500 ms) without inversion;
- T1: "t1" in SeriesDescription.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence

from dicomnode.config import Rule
from dicomnode.receive.routing import attributes_for_routing, route, rule_keys

_RULES_TOML = r"""
[[rules]]
name = "lowfield-64mT-flair"
profile = "FLAIR-64mT"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<0.2"
SeriesDescription = ["(?i)flair", "!(?i)t1.?flair"]
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-64mT-flair-by-ti"
profile = "FLAIR-64mT"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<0.2"
InversionTime = ">=1000"
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-64mT-t2"
profile = "T2-64mT"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<0.2"
SeriesDescription = ["(?i)t2", "!(?i)(flair|t2\\*|star)"]
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-64mT-t2-by-te"
profile = "T2-64mT"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<0.2"
EchoTime = ">=80"
RepetitionTime = ">=1500"
InversionTime = "!>0"
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-64mT-t1"
profile = "T1-64mT"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<0.2"
SeriesDescription = "(?i)t1"
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-flair"
profile = "FLAIR-0.36T"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<1.0"
SeriesDescription = ["(?i)flair", "!(?i)t1.?flair"]
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-flair-by-ti"
profile = "FLAIR-0.36T"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<1.0"
InversionTime = ">=1000"
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-t2"
profile = "T2-0.36T"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<1.0"
SeriesDescription = ["(?i)t2", "!(?i)(flair|t2\\*|star)"]
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-t2-by-te"
profile = "T2-0.36T"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<1.0"
EchoTime = ">=80"
RepetitionTime = ">=1500"
InversionTime = "!>0"
ImageType = "!DERIVED"

[[rules]]
name = "lowfield-t1"
profile = "T1-0.36T"
[rules.match]
Modality = "MR"
MagneticFieldStrength = "<1.0"
SeriesDescription = "(?i)t1"
ImageType = "!DERIVED"
"""


def _default_rules() -> list[Rule]:
    data = tomllib.loads(_RULES_TOML)
    return [Rule(action="enhance", **rule) for rule in data["rules"]]


DEFAULT_RULES: tuple[Rule, ...] = tuple(_default_rules())


def pick_profile(
    dataset: object, rules: Sequence[Rule] | None = None
) -> tuple[str | None, str | None]:
    """(profile, rule name) of the first ``enhance`` rule that holds for ``dataset``'s header;
    (None, None) when none does. Only ``enhance`` rules name profiles, so ``forward`` rules
    are skipped here (the node would forward such a series, not enhance it)."""
    chosen = [r for r in (DEFAULT_RULES if rules is None else rules) if r.action == "enhance"]
    attributes: Mapping[str, object] = attributes_for_routing(dataset, None, rule_keys(chosen))
    decision = route(chosen, attributes)
    if decision.rule is None:
        return None, None
    return decision.profile, decision.rule
