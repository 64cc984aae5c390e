"""The seed notebook's constants: its four tools (same order, same JSON schema) and its four keyword domains."""

from __future__ import annotations

from typing import Any

# The seed notebook's four tools (same order, same JSON schema).
SEED_TOOLS: list[dict[str, Any]] = [
    {
        "name": "calculator",
        "description": "Evaluate a mathematical expression and return the numeric result.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "Math expression"}},
            "required": ["expression"],
        },
    },
    {
        "name": "python_interpreter",
        "description": "Execute Python code and return the output.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source code"}},
            "required": ["code"],
        },
    },
    {
        "name": "web_search",
        "description": "Search the web for up-to-date information.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "Search query"}},
            "required": ["query"],
        },
    },
    {
        "name": "translator",
        "description": "Translate text from one language to another.",
        "parameters": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "description": "Text to translate"},
                "target_language": {"type": "string", "description": "Target language"},
            },
            "required": ["text", "target_language"],
        },
    },
]


# The seed notebook's four keyword domains, in its order (classify() takes the first match).
SEED_DOMAINS: dict[str, list[str]] = {
    "math": [
        "calculate",
        "compute",
        "solve",
        "equation",
        "sum",
        "average",
        "percentage",
        "convert",
        "ratio",
        "divide",
        "multiply",
    ],
    "code": [
        "write a program",
        "code",
        "function",
        "algorithm",
        "implement",
        "script",
        "debug",
        "compile",
        "class",
        "method",
    ],
    "search": [
        "search",
        "find",
        "look up",
        "latest",
        "current",
        "news",
        "recent",
        "who is",
        "what happened",
        "when did",
    ],
    "translation": [
        "translate",
        "translation",
        "say in",
        "convert to",
        "how do you say",
        "in french",
        "in spanish",
        "in german",
        "in japanese",
        "in chinese",
    ],
}
