"""Which policies the config's Colang flows call, read from the rails lists and the ``.co`` files on disk.

The plugin section cannot be checked on its own: a flow may name a policy that does not exist, or send a topic
policy (input only) to the output rail. These helpers find the calls (``csr check input $policy="x"``) so that
:func:`nemo_csr_rail.settings.resolve` can reject such a config when it loads, and ``doctor`` can probe exactly
the modes the flows use. They read files; the schema does not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nemo_csr_rail.directions import DIRECTIONS, Direction

#: the plugin's flows' words (``csr check <words>``), by the direction each checks (the directions' table)
FLOW_DIRECTIONS = {s.flow_words: s.direction.value for s in DIRECTIONS}
FLOW_OF_DIRECTION = {s.direction.value: s.flow for s in DIRECTIONS}
_ANY_FLOW = "|".join(FLOW_DIRECTIONS)
_NOT_INPUT = "|".join(s.flow_words for s in DIRECTIONS if s.direction is not Direction.INPUT)
FLOW_POLICY_RE = re.compile(rf'csr check ({_ANY_FLOW})\s+\$policy\s*=\s*"?([^"\s)]+)"?')
#: a call of a check other than the input check that names no policy (not a flow definition)
BARE_OUTPUT_RE = re.compile(rf'(?m)^(?!\s*(?:define\s+)?flow\b)[^\n#]*\bcsr check (?:{_NOT_INPUT})\b'
                            r'(?![ \t]+\$policy)')
#: the config.yml ``rails`` sections whose ``flows`` lists may call the plugin's flows
RAILS_SECTIONS = tuple(dict.fromkeys(s.rails_section for s in DIRECTIONS))


def referenced_policies(rails_config: Any) -> set[tuple[str, str]]:
    """(direction, policy) pairs named by flows in config.yml rails lists and in the config's own .co files; the
    direction is a :class:`~nemo_csr_rail.policy.Direction` value (``tool_call`` for ``csr check tool calls``)."""
    return {(FLOW_DIRECTIONS[m.group(1)], m.group(2)) for t in _flow_texts(rails_config)
            for m in FLOW_POLICY_RE.finditer(t)}


def uses_unnamed_output_check(rails_config: Any) -> bool:
    """Whether a flow calls a check other than ``csr check input`` (output, tool calls, tool results, retrieval)
    without a ``$policy`` (it then uses the implicit policy)."""
    return any(BARE_OUTPUT_RE.search(t) for t in _flow_texts(rails_config))


def _flow_texts(rails_config: Any) -> list[str]:
    texts: list[str] = []
    rails = getattr(rails_config, "rails", None)
    for direction in RAILS_SECTIONS:
        section = getattr(rails, direction, None) if rails is not None else None
        texts.extend(getattr(section, "flows", None) or [])
    config_path = getattr(rails_config, "config_path", None)
    if config_path:
        for path in str(config_path).split(","):
            root = Path(path)
            if root.is_dir():
                texts.extend(p.read_text(errors="replace") for p in sorted(root.rglob("*.co")))
    return texts
