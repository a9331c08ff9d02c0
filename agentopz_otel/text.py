"""Text from senders, made safe to show."""

from __future__ import annotations

import re

# Direction controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI) reorder the text around them wherever it is
# shown ("Trojan Source"): a name holding one could pass for another in a page or a dashboard legend.
_DIRECTION_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible_direction_controls(text: str) -> str:
    """`text` with each direction control written as its escape, e.g. `\\u202e`."""
    if _DIRECTION_CONTROLS.search(text) is None:
        return text
    return _DIRECTION_CONTROLS.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
