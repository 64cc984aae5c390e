"""A large family of synthetic functions, and requests that one of them answers.

The stand-in tool caller (:mod:`asa_lib.demo.train`) first learned calls for
the prompt format's four tools only; given BFCL's functions it copied the
schema into the arguments. This module draws functions it has never seen,
from templates, so that it learns the skill instead: read the listed
functions, pick the one the request needs, and fill its arguments with values
taken from the request.

- A function is a *subject* (hotel, invoice, song, ...) and a *verb* (book,
  cancel, search, ...), named in one of several styles (``book_hotel``,
  ``hotel.book``, ``bookHotel``, ``travel_api.book_hotel``). Its parameters are
  drawn from the subject's *slots*, of every JSON-Schema type: string, number,
  integer, boolean, enum, array, and nested object. Some are required and some
  optional, an optional one sometimes with a ``default``.
- A request mentions a value for each required parameter and for some of the
  optional ones; the answer is the call with exactly those arguments, values
  typed as the schema says. The request lists 1 to ``max_tools`` functions (the
  recipe: 4), the right one at
  a random place among functions of other subjects.
- Subjects are split into a training part and a held-out part
  (:data:`HELD_OUT`): the synthetic validation is measured on functions whose
  subject the adapter never saw.

No BFCL row, question or function name is used (a test checks the names
against the shipped BFCL files). Everything is drawn from word lists with a
seeded ``random.Random``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Lima", "Hanoi", "Oslo", "Cairo"]
_COUNTRIES = ["Portugal", "Japan", "Kenya", "Canada", "Poland", "Peru", "Vietnam", "Norway"]
_PEOPLE = ["Alice Moreau", "Ben Okafor", "Chen Wei", "Dara Singh", "Emil Novak", "Hana Sato"]
_EMAILS = ["alice@example.com", "ben.o@example.org", "dara@example.net", "team@example.com"]
_MONTHS = ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"]
_TICKERS = ["AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "SONY", "SHEL", "TM"]
_CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD"]
_GENRES = ["jazz", "rock", "classical", "hip hop", "folk", "electronic"]
_CUISINES = ["Italian", "Thai", "Mexican", "Ethiopian", "Japanese", "Lebanese"]
_INGREDIENTS = ["tomatoes", "garlic", "rice", "spinach", "lentils", "chickpeas", "basil", "eggs"]
_TOPICS = ["solar power", "chess openings", "urban gardening", "deep sea fish", "jazz history"]
_COLOURS = ["red", "blue", "green", "black", "white"]
_SIZES = ["small", "medium", "large"]


def _date(r: random.Random) -> str:
    return f"2027-{r.choice(_MONTHS)}-{r.randint(1, 28):02d}"


def _money(r: random.Random) -> float:
    return round(r.uniform(20, 3000), r.choice([0, 2]))


@dataclass(frozen=True)
class Slot:
    """One parameter a subject's functions may take, and how a request mentions its value."""

    name: str
    schema: dict[str, Any]  # its JSON Schema (type, description, enum, items, properties)
    draw: Callable[[random.Random], Any]  # a value
    say: Callable[[Any], str]  # the words of a request that carry the value
    default: Any = None  # a default an optional parameter may show


def _s(name, desc, draw, say, default=None) -> Slot:
    return Slot(name, {"type": "string", "description": desc}, draw, say, default)


def _i(name, desc, lo, hi, say, default=None) -> Slot:
    return Slot(
        name, {"type": "integer", "description": desc}, lambda r: r.randint(lo, hi), say, default
    )


def _n(name, desc, draw, say) -> Slot:
    return Slot(name, {"type": "number", "description": desc}, draw, say)


def _b(name, desc, yes: str, no: str) -> Slot:
    return Slot(
        name,
        {"type": "boolean", "description": desc},
        lambda r: r.random() < 0.5,
        lambda v: yes if v else no,
        False,
    )


def _e(name, desc, values, say, default=None) -> Slot:
    return Slot(
        name,
        {"type": "string", "enum": list(values), "description": desc},
        lambda r: r.choice(values),
        say,
        default,
    )


def _a(name, desc, item_type, pool, say) -> Slot:
    def draw(r: random.Random):
        return r.sample(pool, r.randint(2, 3))

    return Slot(
        name, {"type": "array", "items": {"type": item_type}, "description": desc}, draw, say
    )


def _and(xs) -> str:
    xs = [str(x) for x in xs]
    return ", ".join(xs[:-1]) + " and " + xs[-1] if len(xs) > 1 else xs[0]


def _o(name, desc, fields: dict[str, Slot], say) -> Slot:
    """A nested object: every field required, mentioned together by ``say(value)``."""
    schema = {
        "type": "object",
        "description": desc,
        "properties": {k: dict(f.schema) for k, f in fields.items()},
        "required": list(fields),
    }
    return Slot(name, schema, lambda r: {k: f.draw(r) for k, f in fields.items()}, say)


_CITY = _s("city", "Name of the city.", lambda r: r.choice(_CITIES), lambda v: f"in {v}")
_LOCATION = _o(
    "location",
    "Where, as city and country.",
    {
        "city": _s("city", "City name.", lambda r: r.choice(_CITIES), str),
        "country": _s("country", "Country name.", lambda r: r.choice(_COUNTRIES), str),
    },
    lambda v: f"in {v['city']}, {v['country']}",
)
_DATE = _s("date", "Date in YYYY-MM-DD format.", _date, lambda v: f"on {v}")
_RANGE = _o(
    "date_range",
    "First and last day, YYYY-MM-DD.",
    {"start": _s("start", "First day.", _date, str), "end": _s("end", "Last day.", _date, str)},
    lambda v: f"from {v['start']} to {v['end']}",
)
_PERSON = _s("name", "Full name of the person.", lambda r: r.choice(_PEOPLE), lambda v: f"for {v}")
_EMAIL = _s("email", "Email address.", lambda r: r.choice(_EMAILS), lambda v: f"and send it to {v}")
_CURRENCY = _e("currency", "ISO currency code.", _CURRENCIES, lambda v: f"in {v}", default="USD")
_BUDGET = _n("max_price", "Highest price to pay.", _money, lambda v: f"for at most {v} dollars")
_LIMIT = _i(
    "limit", "How many results to return.", 2, 20, lambda v: f"and show {v} results", default=10
)
_TOPIC = _s("query", "What to look for.", lambda r: r.choice(_TOPICS), lambda v: f"about {v}")

# subject -> (noun phrase, its verbs, its slots: the first one or two are always required)
SUBJECTS: dict[str, tuple[str, list[str], list[Slot]]] = {
    "hotel": (
        "a hotel room",
        ["reserve", "locate"],
        [
            _CITY,
            _i("nights", "Number of nights.", 1, 14, lambda v: f"for {v} nights"),
            _i("guests", "Number of guests.", 1, 6, lambda v: f"for {v} guests", default=2),
            _b(
                "breakfast", "Whether breakfast is included.", "with breakfast", "without breakfast"
            ),
            _BUDGET,
        ],
    ),
    "flight": (
        "a flight",
        ["reserve", "locate"],
        [
            _s("origin", "Departure city.", lambda r: r.choice(_CITIES), lambda v: f"from {v}"),
            _s("destination", "Arrival city.", lambda r: r.choice(_CITIES), lambda v: f"to {v}"),
            _DATE,
            _e("cabin", "Cabin class.", ["economy", "business", "first"], lambda v: f"in {v}"),
            _b("direct_only", "Only direct flights.", "with no stops", "with stops allowed"),
        ],
    ),
    "restaurant": (
        "a restaurant table",
        ["reserve", "locate"],
        [
            _CITY,
            _e("cuisine", "Kind of food.", _CUISINES, lambda v: f"serving {v} food"),
            _i("party_size", "Number of people.", 1, 12, lambda v: f"for {v} people"),
            _s(
                "time",
                "Time of day, HH:MM.",
                lambda r: f"{r.randint(11, 22)}:{r.choice(['00', '30'])}",
                lambda v: f"at {v}",
            ),
        ],
    ),
    "invoice": (
        "an invoice",
        ["create", "send"],
        [
            _s("customer", "Customer name.", lambda r: r.choice(_PEOPLE), lambda v: f"for {v}"),
            _n("amount", "Amount due.", _money, lambda v: f"of {v}"),
            _CURRENCY,
            _s("due_date", "Due date, YYYY-MM-DD.", _date, lambda v: f"due on {v}"),
            _EMAIL,
        ],
    ),
    "stock_quote": (
        "the stock quotes",
        ["fetch", "compare"],
        [
            _a("symbols", "Ticker symbols.", "string", _TICKERS, lambda v: f"for {_and(v)}"),
            _e(
                "interval",
                "Price interval.",
                ["1d", "1w", "1m"],
                lambda v: f"over the {v} interval",
                default="1d",
            ),
            _CURRENCY,
        ],
    ),
    "currency_rate": (
        "an amount of money",
        ["convert"],
        [
            _n("amount", "Amount to convert.", _money, lambda v: f"of {v}"),
            _e("from_currency", "Source currency.", _CURRENCIES, lambda v: f"from {v}"),
            _e("to_currency", "Target currency.", _CURRENCIES, lambda v: f"to {v}"),
            _DATE,
        ],
    ),
    "loan": (
        "a loan payment plan",
        ["compute", "estimate"],
        [
            _n(
                "principal",
                "Amount borrowed.",
                lambda r: float(r.randint(5, 400) * 1000),
                lambda v: f"for {v} borrowed",
            ),
            _n(
                "annual_rate",
                "Yearly interest rate in percent.",
                lambda r: round(r.uniform(1, 9), 2),
                lambda v: f"at {v} percent a year",
            ),
            _i("years", "Length of the loan in years.", 1, 30, lambda v: f"over {v} years"),
            _b("include_fees", "Add the bank's fees.", "including fees", "without fees"),
        ],
    ),
    "playlist": (
        "a playlist",
        ["create", "shuffle"],
        [
            _s(
                "title",
                "Name of the playlist.",
                lambda r: r.choice(["Road Trip", "Focus", "Sunday", "Gym"]),
                lambda v: f"called '{v}'",
            ),
            _a("genres", "Music genres.", "string", _GENRES, lambda v: f"with {_and(v)}"),
            _i(
                "max_songs",
                "Most songs to add.",
                5,
                60,
                lambda v: f"of up to {v} songs",
                default=20,
            ),
            _b(
                "explicit",
                "Allow explicit songs.",
                "allowing explicit songs",
                "with no explicit songs",
            ),
        ],
    ),
    "recipe": (
        "recipes",
        ["search", "suggest"],
        [
            _a(
                "ingredients",
                "Ingredients to use.",
                "string",
                _INGREDIENTS,
                lambda v: f"with {_and(v)}",
            ),
            _e(
                "diet",
                "Diet to respect.",
                ["vegan", "vegetarian", "gluten-free", "any"],
                lambda v: f"that are {v}",
                default="any",
            ),
            _i(
                "max_minutes",
                "Longest cooking time in minutes.",
                10,
                90,
                lambda v: f"ready in {v} minutes",
            ),
            _LIMIT,
        ],
    ),
    "calendar_event": (
        "a calendar event",
        ["schedule", "move"],
        [
            _s(
                "title",
                "Event title.",
                lambda r: r.choice(["Team sync", "Dentist", "Budget review", "Lunch"]),
                lambda v: f"named '{v}'",
            ),
            _DATE,
            _i(
                "duration_minutes",
                "Length in minutes.",
                15,
                180,
                lambda v: f"lasting {v} minutes",
                default=30,
            ),
            _a(
                "attendees",
                "Email addresses of the guests.",
                "string",
                _EMAILS,
                lambda v: f"with {_and(v)}",
            ),
        ],
    ),
    "parcel": (
        "a parcel",
        ["track", "ship"],
        [
            _s(
                "tracking_number",
                "Tracking code.",
                lambda r: f"{r.choice(['ZX', 'QP', 'LM'])}{r.randint(10000000, 99999999)}",
                lambda v: f"with code {v}",
            ),
            _e(
                "carrier",
                "Delivery company.",
                ["postal", "express", "freight"],
                lambda v: f"sent by {v}",
            ),
            _b("notify", "Send updates by email.", "and email me updates", "with no email updates"),
        ],
    ),
    "weather_report": (
        "the weather",
        ["forecast", "report"],
        [
            _LOCATION,
            _i(
                "days", "How many days ahead.", 1, 10, lambda v: f"for the next {v} days", default=3
            ),
            _e(
                "units",
                "Temperature units.",
                ["celsius", "fahrenheit"],
                lambda v: f"in {v}",
                default="celsius",
            ),
        ],
    ),
    "car_rental": (
        "a rental car",
        ["reserve", "quote"],
        [
            _CITY,
            _RANGE,
            _e("car_size", "Size of the car.", _SIZES, lambda v: f"in {v} size"),
            _b("insurance", "Add full insurance.", "with full insurance", "without insurance"),
        ],
    ),
    "statistics": (
        "summary statistics",
        ["derive", "report"],
        [
            _a(
                "values",
                "The numbers.",
                "number",
                [3.5, 8, 12, 19.25, 4, 27, 0.5, 61],
                lambda v: f"of {_and(v)}",
            ),
            _e(
                "measure",
                "Which statistic.",
                ["mean", "median", "variance", "range"],
                lambda v: f"as the {v}",
            ),
            _i("decimals", "Decimal places.", 0, 6, lambda v: f"to {v} decimal places", default=2),
        ],
    ),
    "rectangle": (
        "a rectangle's area",
        ["compute", "measure"],
        [
            _o(
                "size",
                "Width and height.",
                {
                    "width": _n("width", "Width.", lambda r: float(r.randint(2, 90)), str),
                    "height": _n("height", "Height.", lambda r: float(r.randint(2, 90)), str),
                },
                lambda v: f"of {v['width']} by {v['height']}",
            ),
            _e("unit", "Length unit.", ["cm", "m", "in"], lambda v: f"in {v}", default="cm"),
        ],
    ),
    "article": (
        "articles",
        ["search", "summarize"],
        [
            _TOPIC,
            _s(
                "since",
                "Oldest publication date, YYYY-MM-DD.",
                _date,
                lambda v: f"published since {v}",
            ),
            _e(
                "language",
                "Language code.",
                ["en", "fr", "de", "ja"],
                lambda v: f"written in {v}",
                default="en",
            ),
            _LIMIT,
        ],
    ),
    "password": (
        "a password",
        ["create", "make"],
        [
            _i("length", "Number of characters.", 8, 64, lambda v: f"of {v} characters"),
            _b("symbols", "Use symbols.", "with symbols", "without symbols"),
            _b("digits", "Use digits.", "with digits", "without digits"),
        ],
    ),
    "support_ticket": (
        "a support ticket",
        ["open", "escalate"],
        [
            _s(
                "subject",
                "Short summary.",
                lambda r: r.choice(["Login fails", "Refund request", "Broken screen"]),
                lambda v: f"titled '{v}'",
            ),
            _e(
                "priority",
                "Urgency.",
                ["low", "normal", "high", "urgent"],
                lambda v: f"with {v} priority",
                default="normal",
            ),
            _s("customer_email", "Who asked.", lambda r: r.choice(_EMAILS), lambda v: f"for {v}"),
        ],
    ),
    "workout": (
        "a workout plan",
        ["build", "log"],
        [
            _e(
                "goal",
                "Training goal.",
                ["strength", "endurance", "mobility"],
                lambda v: f"for {v}",
            ),
            _i(
                "sessions_per_week", "Sessions a week.", 1, 7, lambda v: f"with {v} sessions a week"
            ),
            _a(
                "equipment",
                "Equipment at hand.",
                "string",
                ["dumbbells", "kettlebell", "bands", "bench"],
                lambda v: f"using {_and(v)}",
            ),
        ],
    ),
    "apartment": (
        "apartments",
        ["list", "search"],
        [
            _CITY,
            _i("bedrooms", "Number of bedrooms.", 1, 5, lambda v: f"with {v} bedrooms"),
            _n("max_rent", "Highest monthly rent.", _money, lambda v: f"under {v} a month"),
            _b("pets_allowed", "Pets allowed.", "that allow pets", "with no pets"),
        ],
    ),
    "reminder": (
        "a reminder",
        ["set", "create"],
        [
            _s(
                "message",
                "What to remember.",
                lambda r: r.choice(["water the plants", "call the bank", "pay rent"]),
                lambda v: f"to {v}",
            ),
            _DATE,
            _b("repeat_weekly", "Repeat every week.", "every week", "just once"),
        ],
    ),
    "translation_job": (
        "a document translation",
        ["order", "quote"],
        [
            _i(
                "word_count",
                "Length of the document in words.",
                100,
                9000,
                lambda v: f"of {v} words",
            ),
            _e(
                "target_language",
                "Language to translate into.",
                ["German", "Korean", "Spanish", "Arabic"],
                lambda v: f"into {v}",
            ),
            _b("rush", "Deliver within a day.", "delivered by tomorrow", "at the normal pace"),
        ],
    ),
    "crypto_price": (
        "crypto prices",
        ["fetch", "chart"],
        [
            _a(
                "coins",
                "Coin symbols.",
                "string",
                ["BTC", "ETH", "SOL", "ADA", "DOT"],
                lambda v: f"for {_and(v)}",
            ),
            _CURRENCY,
            _i("days", "Days of history.", 1, 365, lambda v: f"over the last {v} days", default=7),
        ],
    ),
    "parking": (
        "a parking spot",
        ["reserve", "locate"],
        [
            _CITY,
            _i("hours", "How many hours.", 1, 24, lambda v: f"for {v} hours"),
            _b("covered", "Covered parking.", "under a roof", "in the open"),
            _BUDGET,
        ],
    ),
}

# subjects the adapter never trains on: the synthetic validation's functions
HELD_OUT = ("parcel", "statistics", "apartment", "crypto_price", "translation_job")

_LEADS = ["", "Please ", "Can you ", "Could you ", "I need you to ", "Help me "]
_NAMESPACES = ["api", "tools", "svc", "app"]


def function_name(verb: str, subject: str, style: int) -> str:
    """One of four naming styles: ``verb_subject``, ``subject.verb``, ``verbSubject``, ``ns.verb_subject``."""
    if style == 0:
        return f"{verb}_{subject}"
    if style == 1:
        return f"{subject}.{verb}"
    if style == 2:
        return verb + "".join(x.capitalize() for x in subject.split("_"))
    return f"{_NAMESPACES[len(subject) % len(_NAMESPACES)]}.{verb}_{subject}"


def all_function_names() -> set[str]:
    """Every name :func:`draw_function` can give (for the test against BFCL's names)."""
    return {
        function_name(v, s, k)
        for s, (_, verbs, _) in SUBJECTS.items()
        for v in verbs
        for k in range(4)
    }


@dataclass
class Function:
    """A drawn function: its tool entry and the slots behind its parameters."""

    tool: dict[str, Any]
    verb: str
    subject: str
    slots: list[Slot]
    required: list[str]


def draw_function(r: random.Random, subject: str) -> Function:
    """A function of ``subject``: a verb, a naming style, 1-4 of its slots, the first 1-2 required."""
    noun, verbs, slots = SUBJECTS[subject]
    verb = r.choice(verbs)
    n_req = 1 if len(slots) < 3 else r.choice([1, 2])
    chosen = slots[:n_req] + r.sample(slots[n_req:], r.randint(0, min(3, len(slots) - n_req)))
    props = {}
    for i, s in enumerate(chosen):  # chosen[:n_req] are the required ones: no default
        p = dict(s.schema)
        if i >= n_req and s.default is not None and r.random() < 0.5:
            p["default"] = s.default
        props[s.name] = p
    required = [s.name for s in chosen[:n_req]]
    name = function_name(verb, subject, r.randrange(4))
    desc = f"{verb.capitalize()} {noun}."
    if r.random() < 0.5:
        desc = f"{verb.capitalize()} {noun}, given the {_and([s.name.replace('_', ' ') for s in chosen])}."
    tool = {
        "name": name,
        "description": desc,
        "parameters": {"type": "object", "properties": props, "required": required},
    }
    return Function(tool, verb, subject, chosen, required)


def _request(r: random.Random, fn: Function) -> tuple[str, dict[str, Any]]:
    """A request that ``fn`` answers, and the call: every required argument, some optional ones."""
    noun = SUBJECTS[fn.subject][0]
    args: dict[str, Any] = {}
    phrases = []
    for s in fn.slots:
        if s.name in fn.required or r.random() < 0.5:
            v = s.draw(r)
            args[s.name] = v
            phrases.append(s.say(v))
    lead = r.choice(_LEADS)
    verb = fn.verb if lead else fn.verb.capitalize()
    text = f"{lead}{verb} {noun} {' '.join(phrases)}"
    text = re.sub(r"\s+", " ", text).strip()
    text += "?" if lead in ("Can you ", "Could you ") else "."
    return text, {"name": fn.tool["name"], "arguments": args}


def function_request(
    r: random.Random, subjects: list[str], max_tools: int = 5
) -> tuple[str, list[dict], dict[str, Any]]:
    """(request, its 1-``max_tools`` listed functions, the right call): one subject answers it."""
    k = r.randint(1, max_tools)
    picked = r.sample(subjects, min(k, len(subjects)))
    fns = [draw_function(r, s) for s in picked]
    text, call = _request(r, fns[0])
    r.shuffle(fns)
    return text, [f.tool for f in fns], call


def mismatched_request(
    r: random.Random, subjects: list[str], max_tools: int = 5
) -> tuple[str, list[dict]]:
    """(a request for one subject, 1-``max_tools`` functions of *other* subjects): none fits."""
    k = r.randint(1, max_tools)
    picked = r.sample(subjects, min(k + 1, len(subjects)))
    text, _ = _request(r, draw_function(r, picked[0]))
    return text, [draw_function(r, s).tool for s in picked[1:]]


def unrelated_functions(r: random.Random, subjects: list[str], max_tools: int = 5) -> list[dict]:
    """1-``max_tools`` functions to list beside a plain request (none of them can answer it)."""
    k = r.randint(1, max_tools)
    return [draw_function(r, s).tool for s in r.sample(subjects, min(k, len(subjects)))]


def subjects_of(part: str) -> list[str]:
    """The training subjects (``"train"``) or the held-out ones (``"held_out"``)."""
    if part == "held_out":
        return list(HELD_OUT)
    if part == "train":
        return [s for s in SUBJECTS if s not in HELD_OUT]
    raise ValueError(f"part must be 'train' or 'held_out', not {part!r}")
