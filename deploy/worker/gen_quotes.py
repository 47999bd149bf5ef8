"""Regenerate quotes.json: ~500 short, made-up quotes, deterministically (no network).

    python deploy/worker/gen_quotes.py > deploy/worker/quotes.json
"""

from __future__ import annotations

import json
import random

OPENINGS = [
    "Every {noun} begins with", "Nothing worth {verbing} comes from", "The best {noun} is",
    "A quiet {noun} outlasts", "Trust the {noun}, not", "Patience turns {noun} into",
    "Small {noun}s make", "Never confuse {noun} with", "The road to {noun} is paved with",
    "Good {noun} hides in", "Fortune favours", "Even a slow {noun} beats",
]
ENDINGS = [
    "a single honest step.", "the courage to start again.", "what you do when nobody watches.",
    "a loud excuse.", "the map in your pocket.", "bread on the table.", "great harbours.",
    "motion.", "small daily promises.", "plain sight.", "the curious.", "a fast {noun}.",
    "an unasked question.", "the second attempt.", "a well-kept notebook.", "shared laughter.",
]
NOUNS = ["journey", "idea", "garden", "river", "lesson", "bridge", "habit", "promise", "lantern",
         "harvest", "melody", "question", "letter", "compass", "kettle", "window"]
VERBS = ["keeping", "building", "learning", "sharing", "finding", "mending"]
FIRST = ["Ada", "Bruno", "Chidi", "Dana", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kaia", "Luca", "Mina", "Nils", "Olu", "Priya", "Quinn", "Rosa", "Sven", "Tala"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Alvarez", "Novak", "Haddad", "Brennan",
        "Castillo", "Petrov", "Sato", "Mensah", "Fischer", "Kowalski", "Ibarra"]


def generate(n: int = 500, seed: int = 2024) -> list[dict[str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    while len(out) < n:
        noun = rng.choice(NOUNS)
        text = (rng.choice(OPENINGS) + " " + rng.choice(ENDINGS)).format(
            noun=noun, verbing=rng.choice(VERBS))
        text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "author": f"{rng.choice(FIRST)} {rng.choice(LAST)}"})
    return out


if __name__ == "__main__":
    print(json.dumps(generate(), indent=1, ensure_ascii=False))
