"""Built-in category lists for card layout A.

The model was fine-tuned on the Nemotron Content Safety V2 taxonomy in exactly this wording; keeping the strings
byte-identical to the card is what makes taxonomy verdicts match the published F1.
"""

from __future__ import annotations

NEMOTRON_V2: tuple[str, ...] = (
    "Violence",
    "Sexual",
    "Criminal Planning/Confessions",
    "Guns and Illegal Weapons",
    "Controlled/Regulated Substances",
    "Suicide and Self Harm",
    "Sexual (minor)",
    "Hate/Identity Hate",
    "PII/Privacy",
    "Harassment",
    "Threat",
    "Profanity",
    "Needs Caution",
    "Manipulation",
    "Fraud/Deception",
    "Malware",
    "High Risk Gov Decision Making",
    "Political/Misinformation/Conspiracy",
    "Copyright/Trademark/Plagiarism",
    "Unauthorized Advice",
    "Illegal Activity",
    "Immoral/Unethical",
)

TAXONOMIES: dict[str, tuple[str, ...]] = {"nemotron_v2": NEMOTRON_V2}
