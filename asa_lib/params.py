"""One typed parameter schema, loaded from YAML and validated at the door.

Every stage receives the path of a params file and calls :func:`load_params`.
Bad values fail here, before any model loads, with a :class:`ParamsError` that
names the key and the allowed range.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A params file that cannot be used; the message says which key and why."""


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

MODEL_KINDS = ("hub", "gguf", "tiny")
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
ALPHA_UNITS = ("absolute", "relative")
SHARE_PREFIX = ("auto", "always", "never")
DRAFT = ("auto", "on", "off")


@dataclass
class ModelParams:
    """Which causal LM to load and how."""

    kind: str = "hub"  # hub | gguf | tiny
    id: str = ""  # hub id (hub), a label (gguf, tiny)
    gguf_package: str = ""  # installed Python package that holds the GGUF file
    gguf_file: str = ""  # file name inside that package
    dtype: str = "float32"
    device: str = "auto"  # auto: cuda when available, else cpu
    trust_remote_code: bool = False
    revision: str = ""  # optional hub revision (commit/tag) for reproducibility
    # Optional LoRA adapter folder (peft, safetensors), merged into the weights at load;
    # a relative path is taken relative to the params file.
    adapter: str = ""


@dataclass
class PromptParams:
    """How a prompt is rendered and how a tool call is recognised."""

    # The literal ``{tools_json}`` is replaced by the JSON list of tools (other braces stay).
    system_template: str = "List of tools: {tools_json}"
    tools: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(SEED_TOOLS))
    tool_call_start: str = "<|tool_call_start|>"
    tool_call_end: str = "<|tool_call_end|>"
    # Optional demonstration turns placed between the system prompt and the
    # user prompt: a list of {"role": "user"|"assistant", "content": str}.
    demonstrations: list[dict[str, str]] = field(default_factory=list)


@dataclass
class DataParams:
    """Where the Alpaca-style rows come from and how the splits are sized."""

    # A hub dataset id (e.g. ``tatsu-lab/alpaca``) or a local .json/.jsonl file
    # (optionally .gz/.xz); a relative path is taken relative to the params file.
    source: str = "tatsu-lab/alpaca"
    hub_split: str = "train"
    per_split_per_class: int = 40
    test_multiplier: int = 2
    seed: int = 42


@dataclass
class ExtractionParams:
    batch_size: int = 8


@dataclass
class GenerationParams:
    max_new_tokens: int = 128
    batch_size: int = 8
    # Reuse the prompt format's shared prefix cache: "auto" shares it except for
    # models with conv layers (LFM2) on a GPU, where exactness would force
    # batches of equal suffix length and whole-prompt batches are cheaper.
    share_prefix: str = "auto"  # auto | always | never
    # Draft-verified decoding of steered rows: the baseline output of the same
    # prompt (from the generation cache) is checked in one forward pass and
    # its agreeing prefix accepted; greedy decoding goes on from the first
    # disagreement. Same outputs as plain decoding. "auto" stops verifying
    # within a call where few draft tokens are accepted; "on" always verifies.
    draft: str = "auto"  # auto | on | off


@dataclass
class SteeringParams:
    # absolute: alpha is the seed's unit (added on a unit vector).
    # relative: alpha_eff = alpha x mean L2 norm of the CAL states at L*.
    alpha_unit: str = "absolute"


@dataclass
class SweepConfig:
    name: str
    tau: float
    alpha: float
    beta: float = 0.0


@dataclass
class ReferenceRow:
    """A published row drawn on the plots for comparison (the seed's QWEN_BEST).

    Drawn only for the model ids listed in ``applies_to`` (a row measured on
    another model would mislead on this one's plots).
    """

    name: str = "reference"
    applies_to: list[str] = field(default_factory=list)
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    fpr: float | None = None
    accuracy: float | None = None


@dataclass
class Params:
    name: str
    model: ModelParams = field(default_factory=ModelParams)
    prompt: PromptParams = field(default_factory=PromptParams)
    data: DataParams = field(default_factory=DataParams)
    extraction: ExtractionParams = field(default_factory=ExtractionParams)
    generation: GenerationParams = field(default_factory=GenerationParams)
    steering: SteeringParams = field(default_factory=SteeringParams)
    sweep: list[SweepConfig] = field(default_factory=list)
    reference: ReferenceRow | None = None
    # Folder of the params file; relative data paths resolve against it.
    base_dir: str = field(default=".", metadata={"internal": True})

    # ------------------------------------------------------------------ helpers
    def data_path(self) -> Path | None:
        """The local data file, or None when ``data.source`` is a hub id."""
        return resolve_data_path(self.data.source, Path(self.base_dir))

    def adapter_path(self) -> Path | None:
        """The LoRA adapter folder named by ``model.adapter``, or None."""
        if not self.model.adapter:
            return None
        path = Path(self.model.adapter).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def section_hash(self, *names: str) -> str:
        """Stable hash of some top-level sections (used for stage fingerprints)."""
        d = self.to_dict()
        blob = json.dumps({n: d.get(n) for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("base_dir", None)
        return d


# ---------------------------------------------------------------------------
# Generic, strict conversion from plain YAML data to the dataclasses above.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise ParamsError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(
            f"{where}{unknown[0]}: unknown key (allowed here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{key}: required key is missing")
    return cls(**kwargs)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ParamsError(msg)


def validate(p: Params, check_files: bool = True) -> Params:
    """Range checks that types alone cannot express. Returns ``p``."""
    _check(bool(p.name.strip()), "name: must be a non-empty string")
    m = p.model
    _check(m.kind in MODEL_KINDS, f"model.kind: {m.kind!r} is not one of {MODEL_KINDS}")
    _check(m.dtype in DTYPES, f"model.dtype: {m.dtype!r} is not one of {DTYPES}")
    _check(m.device in DEVICES, f"model.device: {m.device!r} is not one of {DEVICES}")
    if m.kind == "hub":
        _check(bool(m.id), "model.id: a hub model id is required when model.kind is 'hub'")
    if m.kind == "gguf":
        _check(
            bool(m.gguf_package and m.gguf_file),
            "model.gguf_package and model.gguf_file: both are required when model.kind is 'gguf'",
        )
    pr = p.prompt
    _check(bool(pr.tool_call_start), "prompt.tool_call_start: must be a non-empty string")
    _check(bool(pr.tool_call_end), "prompt.tool_call_end: must be a non-empty string")
    _check(len(pr.tools) > 0, "prompt.tools: at least one tool is required")
    for i, t in enumerate(pr.tools):
        _check(
            isinstance(t.get("name"), str) and t["name"],
            f"prompt.tools[{i}].name: each tool needs a non-empty name",
        )
    _check("{tools_json}" in pr.system_template,
           "prompt.system_template: must contain the placeholder {tools_json} (the tool list)")
    for i, turn in enumerate(pr.demonstrations):
        _check(
            set(turn) == {"role", "content"}
            and turn["role"] in ("user", "assistant")
            and isinstance(turn["content"], str),
            f"prompt.demonstrations[{i}]: expected {{role: user|assistant, content: str}}",
        )
    d = p.data
    _check(d.per_split_per_class > 0, "data.per_split_per_class: must be > 0")
    _check(d.test_multiplier > 0, "data.test_multiplier: must be > 0")
    _check(d.seed >= 0, "data.seed: must be >= 0")
    _check(bool(d.source), "data.source: a hub dataset id or a local file path is required")
    if check_files:
        path = p.data_path()
        if path is not None and not path.is_file():
            raise ParamsError(f"data.source: file not found: {path}")
        adapter = p.adapter_path()
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise ParamsError(f"model.adapter: no LoRA adapter (adapter_config.json) in {adapter}")
    _check(p.extraction.batch_size > 0, "extraction.batch_size: must be > 0")
    _check(p.generation.batch_size > 0, "generation.batch_size: must be > 0")
    _check(p.generation.max_new_tokens > 0, "generation.max_new_tokens: must be > 0")
    _check(p.generation.share_prefix in SHARE_PREFIX,
           f"generation.share_prefix: {p.generation.share_prefix!r} is not one of {SHARE_PREFIX}")
    _check(p.generation.draft in DRAFT, f"generation.draft: {p.generation.draft!r} is not one of {DRAFT}")
    _check(
        p.steering.alpha_unit in ALPHA_UNITS,
        f"steering.alpha_unit: {p.steering.alpha_unit!r} is not one of {ALPHA_UNITS}",
    )
    seen: set[str] = set()
    for i, c in enumerate(p.sweep):
        key = f"sweep[{i}]"
        _check(bool(c.name) and c.name.replace("_", "").replace("-", "").isalnum(),
               f"{key}.name: {c.name!r} must be letters, digits, '_' or '-'")
        _check(c.name != "baseline", f"{key}.name: 'baseline' is reserved for the unsteered run")
        _check(c.name not in seen, f"{key}.name: duplicate config name {c.name!r}")
        seen.add(c.name)
        _check(0.5 <= c.tau < 1.0, f"{key}.tau: {c.tau} is outside the allowed range [0.5, 1)")
        _check(c.alpha >= 0, f"{key}.alpha: {c.alpha} is negative (allowed: alpha >= 0)")
        _check(0.0 <= c.beta <= 1.0, f"{key}.beta: {c.beta} is outside the allowed range [0, 1]")
    return p


def resolve_data_path(source: str, base_dir: Path) -> Path | None:
    """A local file path for ``source``, or None when it looks like a hub id."""
    suffixes = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".json.xz", ".jsonl.xz")
    looks_local = source.endswith(suffixes) or source.startswith((".", "/", "~"))
    if not looks_local:
        return None
    path = Path(source).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def params_from_dict(data: dict[str, Any], base_dir: Path | str = ".", check_files: bool = True) -> Params:
    if not isinstance(data, dict):
        raise ParamsError("params file: the top level must be a mapping of sections")
    p = _build(Params, data, "")
    p.base_dir = str(Path(base_dir).resolve())
    return validate(p, check_files=check_files)


def load_params(path: str | Path, check_files: bool = True) -> Params:
    """Load and validate a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        raise ParamsError(f"{path}: the file is empty")
    try:
        return params_from_dict(data, base_dir=path.parent, check_files=check_files)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
