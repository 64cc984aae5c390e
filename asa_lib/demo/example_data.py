"""The labelled example shipped as ``data/labelled_example.jsonl`` (``data.kind: labelled``).

Synthetic user requests written by this project from templates filled with a
seeded RNG; no row comes from Alpaca or any other data set. Three domains that
are not the seed's:

- ``weather``: forecasts for a city and day (tool: ``get_weather``) and
  weather questions that need no lookup (why fog forms, a poem about rain);
- ``calendar``: adding, listing and moving events (tools: ``add_event``,
  ``list_events``) and calendar questions that need no lookup (planning tips,
  why leap years exist);
- ``none``: everything else (poems, tips, explanations); never a tool.

``none`` has no tool rows on purpose: it shows a domain that gets no probe and
no steering vector (the gate never steers prompts routed there).

Regenerate (the output is identical for the same ``seed`` and sizes)::

    python -m asa_lib.demo.example_data data/labelled_example.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

from asa_lib.demo.templates import draw_new

CITIES = [
    "Lisbon",
    "Osaka",
    "Nairobi",
    "Toronto",
    "Krakow",
    "Lima",
    "Hanoi",
    "Oslo",
    "Cairo",
    "Perth",
    "Quito",
    "Tunis",
    "Bergen",
    "Adelaide",
]


DAYS = [
    "today",
    "tomorrow",
    "on Monday",
    "on Tuesday",
    "on Wednesday",
    "on Thursday",
    "on Friday",
    "this weekend",
    "on Saturday morning",
    "next Sunday",
]


TIMES = ["8am", "9:30am", "noon", "2pm", "3:15pm", "5pm", "6:30pm"]


NAMES = ["Alice", "Ben", "Chen", "Dara", "Emil", "Farah", "Goro", "Hana", "Ines", "Jonas"]


EVENTS = [
    "dentist appointment",
    "team meeting",
    "yoga class",
    "project review",
    "lunch",
    "call",
    "parent-teacher meeting",
    "haircut",
]


PHENOMENA = ["fog", "hail", "rainbows", "thunder", "snowflakes", "dew", "sea breezes", "monsoons"]


WEATHER_THINGS = [
    "a summer storm",
    "the first frost",
    "a foggy morning",
    "spring rain",
    "a heat wave",
    "autumn wind",
]


MONTHS = ["January", "February", "April", "July", "September", "November"]


THINGS = [
    "the sea",
    "a quiet library",
    "the city at night",
    "a cup of tea",
    "mountains",
    "an old bicycle",
    "a lighthouse",
    "friendship",
    "a garden",
]


ACTIVITIES = [
    "sleeping better",
    "learning a language",
    "staying focused",
    "saving money",
    "public speaking",
    "keeping a plant alive",
    "cooking for one",
]


CONCEPTS = [
    "what a prime number is",
    "why the sky is blue",
    "how vaccines work",
    "what inflation means",
    "what photosynthesis is",
    "how a bicycle stays upright",
    "what an algorithm is",
]


ANIMALS = ["cat", "dog", "parrot", "turtle", "rabbit", "goldfish"]


COUNTS = ["two", "three", "four", "five"]


def _weather_tool(r: random.Random) -> str:
    city, day = r.choice(CITIES), r.choice(DAYS)
    return r.choice(
        [
            f"What will the weather be like in {city} {day}?",
            f"Will it rain in {city} {day}?",
            f"How cold will it get in {city} {day}?",
            f"Do I need an umbrella in {city} {day}?",
            f"What is the wind forecast for {city} {day}?",
            f"Check the forecast for {city} {day}, please.",
            f"Is it going to be sunny in {city} {day}?",
        ]
    )


def _weather_plain(r: random.Random) -> str:
    return r.choice(
        [
            f"Explain how {r.choice(PHENOMENA)} form, in simple words.",
            f"Write a short poem about {r.choice(WEATHER_THINGS)}.",
            f"Give me {r.choice(COUNTS)} tips for staying cool in hot weather.",
            f"Describe {r.choice(WEATHER_THINGS)} in {r.choice(COUNTS)} sentences.",
            f"What is the difference between weather and climate? Answer {r.choice(['briefly', 'for a child'])}.",
            f"Why do {r.choice(PHENOMENA)} happen more often in some places?",
            f"Write a haiku about {r.choice(WEATHER_THINGS)}.",
        ]
    )


def _calendar_tool(r: random.Random) -> str:
    name, day, time, event = r.choice(NAMES), r.choice(DAYS), r.choice(TIMES), r.choice(EVENTS)
    return r.choice(
        [
            f"Add a {event} with {name} {day} at {time} to my calendar.",
            f"What is on my calendar {day}?",
            f"Schedule a {event} {day} at {time}.",
            f"Move my {event} with {name} to {day} at {time}.",
            f"Am I free {day} at {time}?",
            f"Put {name}'s birthday party in my calendar {day} at {time}.",
            f"List my appointments {day}.",
        ]
    )


def _calendar_plain(r: random.Random) -> str:
    return r.choice(
        [
            f"Give me {r.choice(COUNTS)} tips for planning a busy week.",
            f"Write a polite message to {r.choice(NAMES)} declining a {r.choice(EVENTS)}.",
            f"Why does {r.choice(MONTHS)} have the number of days it has?",
            f"Suggest an agenda for a {r.choice(EVENTS)}.",
            f"Explain why calendars have leap years, {r.choice(['briefly', 'for a child', 'in one paragraph'])}.",
            f"Where does the name {r.choice(MONTHS)} come from?",
            f"How should I prepare for a {r.choice(EVENTS)}? Give {r.choice(COUNTS)} ideas.",
        ]
    )


def _none_plain(r: random.Random) -> str:
    # Sentence frames of their own: the demo model's plain training requests
    # (asa_lib.demo.synthetic) use others, so the two sets share no request (tested).
    return r.choice(
        [
            f"Compose a little poem on the theme of {r.choice(THINGS)}.",
            f"List {r.choice(COUNTS)} pieces of advice about {r.choice(ACTIVITIES)}.",
            f"In plain language, what is {r.choice(CONCEPTS)}?",
            f"I need {r.choice(COUNTS)} name ideas for a pet {r.choice(ANIMALS)}.",
            f"Paint a picture of {r.choice(THINGS)} in {r.choice(COUNTS)} sentences.",
            f"How do I get started with {r.choice(ACTIVITIES)}?",
        ]
    )


# (domain, label, maker), in the order the rows are drawn
BUCKETS: list[tuple[str, str, Callable[[random.Random], str]]] = [
    ("weather", "tool", _weather_tool),
    ("weather", "non_tool", _weather_plain),
    ("calendar", "tool", _calendar_tool),
    ("calendar", "non_tool", _calendar_plain),
    ("none", "non_tool", _none_plain),
]


def labelled_example_rows(per_bucket: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """``per_bucket`` distinct requests per (domain, label) of :data:`BUCKETS`, shuffled.

    Each row: ``{"id", "text", "label", "domain"}`` with label ``tool`` or ``non_tool``.
    """
    r = random.Random(seed)
    seen: set[str] = set()
    rows = []
    for domain, label, make in BUCKETS:
        for i in range(per_bucket):
            text = draw_new(lambda make=make: make(r), seen, f"{domain}/{label}")
            rows.append(
                {"id": f"{domain}-{label}-{i:03d}", "text": text, "label": label, "domain": domain}
            )
    r.shuffle(rows)
    return rows


def write_labelled_example(path: str | Path, per_bucket: int = 40, seed: int = 0) -> Path:
    """Write :func:`labelled_example_rows` as JSONL (one row a line)."""
    path = Path(path)
    rows = labelled_example_rows(per_bucket, seed)
    path.write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8"
    )
    return path


if __name__ == "__main__":
    out = write_labelled_example(
        sys.argv[1] if len(sys.argv) > 1 else "data/labelled_example.jsonl"
    )
    print(f"wrote {out}")
