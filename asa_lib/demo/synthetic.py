"""The demo model's synthetic training requests: templated tool requests and plain requests.

Filled from word lists with a seeded RNG; no Alpaca row. The labelled example
(:mod:`asa_lib.demo.example_data`) has word lists of its own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from asa_lib.demo.functions import (
    function_request,
    mismatched_request,
    subjects_of,
    unrelated_functions,
)
from asa_lib.demo.templates import draw_new
from asa_lib.params import PromptParams

_NAMES = ["Alice", "Ben", "Chen", "Dara", "Emil", "Farah", "Goro", "Hana"]


_CITIES = [
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
]


_TOPICS = [
    "electric cars",
    "the Mars rover",
    "solar panels",
    "the World Cup",
    "bird flu",
    "quantum computers",
    "the stock market",
    "the Nobel Prize",
    "space tourism",
    "new smartphones",
    "climate talks",
    "the Olympics",
    "AI regulation",
    "coffee prices",
]


_COMPANIES = ["Apple", "Toyota", "Nestle", "Samsung", "Siemens", "Netflix", "Shell", "Sony"]


_LANGS = ["French", "Spanish", "German", "Japanese", "Italian", "Portuguese", "Chinese", "Korean"]


_PHRASES = [
    "good morning",
    "where is the train station",
    "thank you very much",
    "I love reading books",
    "the weather is nice today",
    "how much does this cost",
    "see you tomorrow",
    "happy birthday",
    "I am learning to cook",
    "please open the window",
    "the museum opens at nine",
]


_THINGS = [
    "the sea",
    "autumn leaves",
    "a quiet library",
    "the city at night",
    "a cup of tea",
    "mountains",
    "an old bicycle",
    "the first snow",
    "a lighthouse",
    "friendship",
    "a rainy afternoon",
]


_ACTIVITIES = [
    "sleeping better",
    "learning a language",
    "staying focused",
    "running a first 5k",
    "keeping a plant alive",
    "public speaking",
    "saving money",
    "making new friends",
]


_CONCEPTS = [
    "what a prime number is",
    "what a variable is in programming",
    "why the sky is blue",
    "what photosynthesis is",
    "what a search engine does",
    "why we have seasons",
    "what an algorithm is",
    "what a fraction is",
    "how vaccines work",
    "what inflation means",
    "why leaves change colour",
    "what gravity does",
]


def _calc(r: random.Random) -> tuple[str, dict]:
    a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(2, 999)
    forms = [
        (f"What is {a} * {b} + {c}?", f"{a} * {b} + {c}"),
        (f"Calculate {c} divided by {a}.", f"{c} / {a}"),
        (f"Compute the square root of {c}.", f"sqrt({c})"),
        (f"How much is {a}% of {c}?", f"{a} / 100 * {c}"),
        (f"Find the sum of {a}, {b} and {c}.", f"{a} + {b} + {c}"),
        (f"What is {c} minus {b}, times {a}?", f"({c} - {b}) * {a}"),
        (f"Calculate the average of {a}, {b} and {c}.", f"({a} + {b} + {c}) / 3"),
        (f"What is {a} to the power of 3?", f"{a} ** 3"),
    ]
    q, expr = r.choice(forms)
    return q, {"name": "calculator", "arguments": {"expression": expr}}


def _code(r: random.Random) -> tuple[str, dict]:
    n = r.randint(3, 12)
    xs = [r.randint(0, 50) for _ in range(r.randint(3, 6))]
    w = r.choice(["banana", "level", "python", "racecar", "keyboard"])
    forms = [
        (
            f"Run this Python code and tell me the output: print(sorted({xs}))",
            f"print(sorted({xs}))",
        ),
        (
            f"Execute a Python program that prints the first {n} square numbers.",
            f"print([i * i for i in range(1, {n + 1})])",
        ),
        (f"Use Python to check whether '{w}' is a palindrome.", f"print('{w}' == '{w}'[::-1])"),
        (f"Run Python to count the vowels in '{w}'.", f"print(sum(c in 'aeiou' for c in '{w}'))"),
        (f"Execute this code: print(sum(range({n * 10})))", f"print(sum(range({n * 10})))"),
        (
            f"Run a script that prints the factorial of {n}.",
            f"import math\nprint(math.factorial({n}))",
        ),
    ]
    q, code = r.choice(forms)
    return q, {"name": "python_interpreter", "arguments": {"code": code}}


def _search(r: random.Random) -> tuple[str, dict]:
    t, city, co = r.choice(_TOPICS), r.choice(_CITIES), r.choice(_COMPANIES)
    forms = [
        (f"Search the web for the latest news about {t}.", f"latest news {t}"),
        (f"Find current information on {t}.", f"{t} current information"),
        (
            f"What is the weather forecast for {city} this weekend?",
            f"weather forecast {city} this weekend",
        ),
        (f"Look up today's stock price of {co}.", f"{co} stock price today"),
        (
            f"Who won the most recent match in {city}? Look it up.",
            f"most recent match {city} winner",
        ),
        (f"What happened in {city} this week?", f"{city} news this week"),
        (f"Search for recent articles on {t}.", f"recent articles {t}"),
        (f"What are today's headlines about {t}?", f"today's headlines {t}"),
        (
            f"Look up the opening hours of the main museum in {city}.",
            f"{city} main museum opening hours",
        ),
        (f"Find the current population of {city}.", f"{city} current population"),
        (f"Search for the latest quarterly results of {co}.", f"{co} latest quarterly results"),
        (f"Who is the current CEO of {co}? Look it up.", f"{co} current CEO"),
    ]
    q, query = r.choice(forms)
    return q, {"name": "web_search", "arguments": {"query": query}}


def _translate(r: random.Random) -> tuple[str, dict]:
    p, lang = r.choice(_PHRASES), r.choice(_LANGS)
    forms = [
        f"Translate '{p}' into {lang}.",
        f"How do you say '{p}' in {lang}?",
        f"Please translate this sentence to {lang}: {p}",
    ]
    return r.choice(forms), {
        "name": "translator",
        "arguments": {"text": p, "target_language": lang},
    }


_FORMS = [
    "a short poem",
    "a haiku",
    "a limerick",
    "a two-line rhyme",
    "a very short story",
    "a slogan",
]


_STYLES = ["in simple words", "to a ten-year-old", "in one paragraph", "briefly", "with an example"]


_ANIMALS = ["cat", "dog", "parrot", "turtle", "rabbit", "hamster", "goldfish"]


_FACTS = [
    "octopuses",
    "honey",
    "the moon",
    "penguins",
    "volcanoes",
    "bees",
    "the ocean",
    "trees",
    "owls",
]


_EVENTS = [
    "a new job",
    "a graduation",
    "moving house",
    "a wedding",
    "a retirement",
    "a first marathon",
]


_COUNT = ["two", "three", "four", "five"]


def _plain(r: random.Random) -> str:
    """A request that needs no tool (some use math, code or search words on purpose)."""
    forms = [
        lambda: f"Write {r.choice(_FORMS)} about {r.choice(_THINGS)}.",
        lambda: f"Give me {r.choice(_COUNT)} tips for {r.choice(_ACTIVITIES)}.",
        lambda: f"Describe {r.choice(_THINGS)} in {r.choice(_COUNT)} sentences.",
        lambda: f"Explain {r.choice(_CONCEPTS)} {r.choice(_STYLES)}.",
        lambda: f"Suggest {r.choice(_COUNT)} names for a pet {r.choice(_ANIMALS)}.",
        lambda: f"What is a good way to start {r.choice(_ACTIVITIES)}?",
        lambda: f"Write a note to {r.choice(_NAMES)} to congratulate them on {r.choice(_EVENTS)}.",
        lambda: f"Tell me a fun fact about {r.choice(_FACTS)}.",
        lambda: f"Why does {r.choice(_ACTIVITIES)} matter? Answer {r.choice(_STYLES)}.",
    ]
    return r.choice(forms)()


TOOL_MAKERS = {
    "calculator": _calc,
    "python_interpreter": _code,
    "web_search": _search,
    "translator": _translate,
}


@dataclass
class Example:
    text: str  # the user request
    call: dict | None  # the tool call it needs, or None
    answer: str = ""  # the assistant's answer (filled in for plain requests by distillation)
    tools: list[dict] | None = None  # the request's own listed functions (None: ``prompt.tools``)
    group: str = "four_tools"  # which part of the mix it belongs to (``training.json`` counts them)


def synthetic_requests(
    pp: PromptParams, n_tool: int, n_plain: int, rng: random.Random, seen: set[str]
) -> list[Example]:
    """``n_tool`` tool requests (round-robin over the prompt's known tools) and ``n_plain`` plain ones.

    Texts already in ``seen`` are drawn again, so train and validation never share a request.
    """
    tools = [t["name"] for t in pp.tools if t["name"] in TOOL_MAKERS]
    if not tools:
        raise ValueError(
            f"none of the prompt's tools has a request template (known: {sorted(TOOL_MAKERS)})"
        )
    out: list[Example] = []

    def fresh(make):
        return draw_new(
            make,
            seen,
            "demo model's (lower the recipe's sizes)",
            text=lambda item: item[0] if isinstance(item, tuple) else item,
        )

    for i in range(n_tool):
        q, call = fresh(lambda i=i: TOOL_MAKERS[tools[i % len(tools)]](rng))
        out.append(Example(q, call, pp.tool_call_start + json.dumps(call) + pp.tool_call_end))
    for _ in range(n_plain):
        out.append(Example(fresh(lambda: _plain(rng)), None))
    rng.shuffle(out)
    return out


def function_requests(
    pp: PromptParams,
    n_tool: int,
    n_plain: int,
    rng: random.Random,
    seen: set[str],
    part: str = "train",
    max_functions: int = 5,
) -> list[Example]:
    """Requests that list their own synthetic functions (:mod:`asa_lib.demo.functions`).

    - ``n_tool`` requests that one listed function answers, with the right call as the answer;
    - ``n_plain`` requests that no listed function answers, answered directly (1-``max_functions`` listed): half are plain
      requests (:func:`_plain`), half ask for what a function of *another* subject would do
      (they read like tool requests, as BFCL's irrelevance rows do).

    ``part``: the training subjects or the held-out ones.
    """
    subjects = subjects_of(part)
    group = f"functions_{part}"
    out: list[Example] = []
    for _ in range(n_tool):
        text, tools, call = draw_new(
            lambda: function_request(rng, subjects, max_functions),
            seen,
            "demo model's function (lower the recipe's sizes)",
            text=lambda item: item[0],
        )
        answer = pp.tool_call_start + json.dumps(call) + pp.tool_call_end
        out.append(Example(text, call, answer, tools, group))
    for i in range(n_plain):
        if i % 2:
            text, tools = draw_new(
                lambda: mismatched_request(rng, subjects, max_functions),
                seen,
                "demo model's function (lower the recipe's sizes)",
                text=lambda item: item[0],
            )
        else:
            text = draw_new(lambda: _plain(rng), seen, "demo model's (lower the recipe's sizes)")
            tools = unrelated_functions(rng, subjects, max_functions)
        out.append(Example(text, None, "", tools, group))
    rng.shuffle(out)
    return out
