"""Apply a tuned adapter to new prompts: ``ASA.load(folder)``, ``asa.steering(model)``, ``asa.decide``.

A run ends with ``reports/<name>/chosen_adapter/``: the bundle (scaler, router,
probes, vectors at L*) and the config chosen on VALID (tau, alpha, beta,
alpha_unit, alpha_eff). :class:`ASA` loads it, checks that a model is the one
the bundle was built on (model id, hidden size, block count, weights'
fingerprint and digest: :meth:`Bundle.check_model`), and steers
``model.generate`` in one pass (see :mod:`asa_lib.method.online`)::

    from asa_lib import ASA
    from asa_lib.model.load import load_params_model
    from asa_lib.params import load_params

    params = load_params("params/demo.yaml")
    lm = load_params_model(params)                   # model, tokenizer and its id
    asa = ASA.load("reports/demo/chosen_adapter")    # tau/alpha/beta overrides allowed
    asa.decide(lm, None, ["What is 17 * 23?"])      # routed domain, p(tool), gate: no generation
    with asa.steering(lm) as session:                # any generate call on lm.model is steered
        out = lm.model.generate(**batch)             # left-padded batch
    session.last                                     # the decisions of that call, per row
    asa.generate(lm, None, ["What is 17 * 23?"])    # the same, batched, with the prompt format

Inputs for :meth:`ASA.decide` and :meth:`ASA.generate`: a string is a user
request, rendered in the run's prompt format (system text with the tool list,
demonstrations: read from the run's ``params.yaml`` beside the adapter folder,
or given as ``prompt=``), since the probes were fitted on prompts in that
format (the adapter records that format's sha256, and :meth:`ASA.load` refuses
another one). A request ``{"text": ..., "tools": [...]}`` or ``{"messages": [...],
"tools": [...]}`` (a conversation, :mod:`asa_lib.chat`; tools optional) is rendered in
the same format with its own tools (:func:`request_of`). A bare list of chat messages is
rendered by the tokenizer's chat template as it is, without the format. A control token
written in a request, a tool or a message stays text (:mod:`asa_lib.prompts`); a bad
message is a ``ValueError`` naming the input, the message and the field
(:func:`asa_lib.chat.check_messages`). With ``rendered=True`` strings are full prompt texts. With ``prompt.tools_in: chat_template``
a chat template that ignores ``tools=`` is refused (``ParamsError``:
:func:`~asa_lib.prompts.check_template_renders_tools`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asa_lib.chat import Messages, check_messages
from asa_lib.engine.generate import GenerationSettings
from asa_lib.method.bundle import Bundle, BundleError, load_bundle
from asa_lib.method.gate import alpha_effective
from asa_lib.method.online import (
    ONLINE_VECTORS,
    Decision,
    OnlineGate,
    SteeringSession,
    decide_prompts,
    generate_online,
    online_steering,
)
from asa_lib.model.load import LoadedModel, model_facts, tokenizer_digest
from asa_lib.params import (
    ALPHA_UNITS,
    GenerationParams,
    Params,
    ParamsError,
    PromptParams,
    check_batch_size,
    check_config_values,
    load_params,
    tool_list_problem,
)
from asa_lib.prompts import (
    check_template_renders_tools,
    prompt_format_sha256,
    render_messages,
    render_prompt,
)

# A request with its own tools: {"text": str} or {"messages": [...]}, with "tools": [tool
# schemas] (optional).
Request = dict[str, Any]
PromptInput = str | Messages | Request


class AdapterError(BundleError):
    """An adapter folder that cannot be used: missing, tampered, or without a usable config."""


class ModelMismatchError(BundleError):
    """The model is not the one the adapter was built on (id, weights, hidden size or block count)."""


@dataclass(frozen=True)
class Generation:
    """One prompt's steered output and the decision that steered it."""

    output: str
    decision: Decision


@dataclass
class ASA:
    """An adapter bundle with one (tau, alpha, beta) config, ready to steer a model."""

    bundle: Bundle
    tau: float
    alpha: float
    beta: float = 0.0
    alpha_unit: str = "absolute"
    # "mixture" (the label vectors) or "behaviour" (the bundle's behaviour directions)
    vector: str = "mixture"
    alpha_eff: float | None = None  # None: computed from alpha and alpha_unit
    name: str = "custom"
    prompt: PromptParams | None = None  # the prompt format the probes were fitted on
    folder: Path | None = None
    allow_model_mismatch: bool = False  # check only the shapes, not the model's identity
    # the steering block (None: L*, the bundle's block); the gate reads the probe at L* always
    layer: int | None = None
    gate: OnlineGate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"{self.folder}: " if self.folder else ""
        if self.alpha_unit not in ALPHA_UNITS:
            raise AdapterError(f"{where}alpha_unit {self.alpha_unit!r} is not one of {ALPHA_UNITS}")
        try:
            check_config_values(
                f"{where}{{name}}",
                alpha_unit=self.alpha_unit,
                tau=self.tau,
                alpha=self.alpha,
                beta=self.beta,
            )
        except ParamsError as e:
            raise AdapterError(str(e)) from None
        if self.layer is not None and (
            isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral)
        ):
            raise AdapterError(f"{where}layer {self.layer!r} is not a block index")
        at = None if self.layer is None or self.layer == self.bundle.layer else int(self.layer)
        self.layer = at
        try:
            self.bundle.block(at)
        except BundleError as e:
            raise AdapterError(f"{where}{e}") from None
        try:
            expected = alpha_effective(self.alpha, self.alpha_unit, self.bundle, at)
        except ParamsError as e:  # alpha's upper bound for this bundle
            raise AdapterError(f"{where}{e}") from None
        if self.alpha_eff is not None and (
            isinstance(self.alpha_eff, bool) or not isinstance(self.alpha_eff, numbers.Real)
        ):
            raise AdapterError(f"{where}alpha_eff {self.alpha_eff!r} is not a number")
        if self.alpha_eff is None:
            self.alpha_eff = expected
        elif not math.isclose(float(self.alpha_eff), expected, rel_tol=1e-9, abs_tol=1e-12):
            raise AdapterError(
                f"{where}the config's alpha_eff {self.alpha_eff} does not match alpha "
                f"{self.alpha} ({self.alpha_unit}) for this bundle ({expected}): "
                "the adapter was edited"
            )
        self.tau, self.alpha, self.beta = float(self.tau), float(self.alpha), float(self.beta)
        self.alpha_eff = float(self.alpha_eff)
        if self.vector not in ONLINE_VECTORS:
            raise AdapterError(f"{where}vector {self.vector!r} is not one of {ONLINE_VECTORS}")
        if self.vector == "behaviour" and "global" not in self.bundle.block(at).behaviour_vectors:
            raise AdapterError(
                f"{where}the config steers along the behaviour directions (vector 'behaviour'), "
                "but the bundle has none" + ("" if at is None else f" at block {at}")
            )
        self.gate = OnlineGate(
            self.bundle, self.tau, self.alpha_eff, self.beta, self.vector, layer=at
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        folder: str | Path,
        tau: float | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        alpha_unit: str | None = None,
        prompt: PromptParams | Params | None = None,
        allow_model_mismatch: bool = False,
        allow_unsigned: bool = False,
        layer: int | None = None,
    ) -> ASA:
        """Load a ``chosen_adapter/`` folder (bundle + chosen config); overrides replace its values.

        The config's steering block (``layer`` in its config; absent: L*) is where the delta
        is added; ``layer=`` overrides it (a block the bundle has vectors for). A relative
        alpha is in that block's unit.

        ``alpha`` is in the config's ``alpha_unit`` (``relative``: a fraction of the
        mean CAL state norm at L*) unless ``alpha_unit`` is given too. Without an
        override the recorded ``alpha_eff`` is used (and checked against alpha).
        A bare bundle folder (``bundle/``) has no config: pass tau and alpha.
        ``prompt``: the prompt format; by default the run's ``params.yaml`` beside
        the folder, where there is one. An adapter that records its prompt format
        (written by stage 05 since it did) refuses a ``prompt`` of another format
        (:meth:`Bundle.check_prompt_format`), and does not take a ``params.yaml``
        beside it of another format (a rerun rewrote it): then its format is
        unknown here (``prompt`` None). ``allow_model_mismatch``: use the
        adapter on a model other than the one it was built on (its id, block
        count or weights' fingerprint differ); the shapes still have to fit.
        ``allow_unsigned``: load a bundle whose ``adapter.json`` has no
        ``sha256`` (refused by default: its edits cannot be detected).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise AdapterError(
                f"{folder}: no such adapter folder (a run writes it to "
                "reports/<name>/chosen_adapter when stage 07 chooses a steered config)"
            )
        try:
            bundle = load_bundle(folder, allow_unsigned=allow_unsigned)
        except AdapterError:
            raise
        except BundleError as e:
            raise AdapterError(str(e)) from None
        config = bundle.extra.get("config")
        if config is None:
            config = {}
        elif not isinstance(config, dict):
            raise AdapterError(f"{folder}/adapter.json: 'config' is not a mapping")
        if tau is None and "tau" not in config or alpha is None and "alpha" not in config:
            raise AdapterError(
                f"{folder}: the adapter records no chosen config (tau, alpha); "
                "pass tau= and alpha= (or use the run's chosen_adapter/ folder)"
            )
        if config.get("gate", "probe") != "probe" or config.get("vector", "mixture") not in (
            ONLINE_VECTORS
        ):
            raise AdapterError(
                f"{folder}: the chosen config is an ablation (gate {config.get('gate')!r}, vector "
                f"{config.get('vector')!r}); only gate 'probe' with the mixture or behaviour "
                "vector is applied online"
            )
        if alpha_unit is not None and alpha is None:
            raise AdapterError("alpha_unit overrides the unit of an alpha you give: pass alpha too")
        unit = alpha_unit or config.get("alpha_unit") or "absolute"
        keep_eff = alpha is None and alpha_unit is None and layer is None
        if isinstance(prompt, Params):
            prompt = prompt.prompt
        if prompt is not None:
            try:
                bundle.check_prompt_format(prompt_format_sha256(prompt))
            except BundleError as e:
                raise AdapterError(f"{folder}: {e}") from None
        else:
            prompt = run_prompt_format(folder)
            if (
                prompt is not None
                and bundle.prompt_format_sha256
                and prompt_format_sha256(prompt) != bundle.prompt_format_sha256
            ):
                prompt = None  # not the format the adapter was fitted on
        name = str(config.get("name", "custom"))
        if any(x is not None for x in (tau, alpha, beta, alpha_unit, layer)):
            name += " (overridden)"
        steer_at = config.get("layer") if layer is None else layer
        return cls(
            bundle=bundle,
            tau=config.get("tau") if tau is None else tau,
            alpha=config.get("alpha") if alpha is None else alpha,
            beta=config.get("beta", 0.0) if beta is None else beta,
            alpha_unit=unit,
            vector=str(config.get("vector", "mixture")),
            alpha_eff=config.get("alpha_eff") if keep_eff else None,
            name=name,
            prompt=prompt,
            folder=folder,
            allow_model_mismatch=allow_model_mismatch,
            layer=steer_at,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The config in use, and what the bundle was built on (for reports and ``--json``)."""
        return {
            "name": self.name,
            "tau": self.tau,
            "alpha": self.alpha,
            "alpha_unit": self.alpha_unit,
            "alpha_eff": self.alpha_eff,
            "beta": self.beta,
            "vector": self.vector,
            # the block the delta is added at, and the block the gate reads (L*)
            "layer": self.bundle.layer if self.layer is None else self.layer,
            "gate_layer": self.bundle.layer,
            "model_id": self.bundle.model_id,
            "folder": str(self.folder) if self.folder else None,
        }

    # ------------------------------------------------------------------ the model
    def check_model(
        self, model: LoadedModel | torch.nn.Module, model_id: str | None = None
    ) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` is the bundle's model.

        The bundle's own check (:meth:`Bundle.check_model`): hidden size, block
        count, id, the fingerprint of the weights' names, shapes and dtypes
        where the bundle records one, and the digest of the weights' values
        (a bundle without one is refused); of a :class:`LoadedModel`, its tokenizer
        too, where the bundle records one (:meth:`Bundle.check_tokenizer`).
        ``allow_model_mismatch`` (see :meth:`load`) relaxes it to the shapes.
        The id is ``model_id``, else a
        :class:`LoadedModel`'s id, else the model config's ``name_or_path``;
        pass ``model_id`` to vouch for a copy of the same model under another
        name or path.
        """
        module = model.model if isinstance(model, LoadedModel) else model
        if model_id is None:
            model_id = (
                model.model_id
                if isinstance(model, LoadedModel)
                else str(getattr(module.config, "name_or_path", "") or "")
            )
        b, facts = self.bundle, model_facts(module, model_id)
        try:
            b.check_facts(facts, allow_mismatch=self.allow_model_mismatch)
            if isinstance(model, LoadedModel):
                b.check_tokenizer(tokenizer_digest(model.tokenizer), self.allow_model_mismatch)
        except BundleError as e:
            hint = ""
            if model_id != b.model_id and (facts.hidden_size, facts.num_layers) == (
                b.hidden_size,
                b.num_layers,
            ):
                hint = " In Python, model_id= vouches for the same model under another name."
            raise ModelMismatchError(f"{e}{hint}") from None

    def _lm(
        self, model: LoadedModel | torch.nn.Module, tokenizer, model_id: str | None
    ) -> LoadedModel:
        self.check_model(model, model_id)
        if isinstance(model, LoadedModel):
            if tokenizer is None or tokenizer is model.tokenizer:
                return model
            model = model.model
        if tokenizer is None:
            raise TypeError("a tokenizer is needed with a bare model (or pass a LoadedModel)")
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token"
            )
        device = next(model.parameters()).device
        lm = LoadedModel(model, tokenizer, model_id or self.bundle.model_id, device)
        self.check_model(lm, model_id)  # the tokenizer given, where the bundle records one
        return lm

    @contextmanager
    def steering(
        self,
        model: LoadedModel | torch.nn.Module,
        tokenizer: Any = None,
        *,
        model_id: str | None = None,
    ) -> Iterator[SteeringSession]:
        """Steer every ``generate`` call on ``model`` inside the ``with`` block, in one pass.

        Batches must be left-padded, with their ``attention_mask``. The
        session's ``calls`` hold each call's per-row decisions
        (``session.last``: this thread's latest call's). Calls from several
        threads inside one block are each steered once, by their own state.
        ``tokenizer`` is not needed; it is accepted for symmetry with :meth:`decide`.
        """
        self.check_model(model, model_id)
        module = model.model if isinstance(model, LoadedModel) else model
        with online_steering(module, self.gate) as session:
            yield session

    def render(
        self, tokenizer: Any, inputs: PromptInput | Sequence[PromptInput], rendered: bool = False
    ) -> list[str]:
        """The prompt texts for ``inputs`` (see the module docstring)."""
        single = isinstance(inputs, (str, dict)) or _is_messages(inputs)
        items = [inputs] if single else list(inputs)
        out = []
        for n, x in enumerate(items):
            tools, own = None, False
            if isinstance(x, dict):  # a request (a text or a conversation) with its own tools
                x, tools = request_of(x, f"input {n}")
                own = True
            if isinstance(x, str) or own:
                if rendered and not own:
                    out.append(x)
                elif self.prompt is None:
                    raise AdapterError(
                        "a text prompt is rendered in the adapter's prompt format, which is "
                        "unknown here: pass prompt= to ASA.load (e.g. params.prompt), "
                        "chat messages, or rendered=True"
                    )
                else:  # a template that drops the tools is refused (checked once per tokenizer)
                    check_template_renders_tools(tokenizer, self.prompt)
                    out.append(render_prompt(tokenizer, self.prompt, x, tools))
            elif _is_messages(x):  # as it is, no format; data: control tokens stay text
                out.append(render_messages(tokenizer, check_messages(x, f"input {n}")))
            else:
                raise TypeError(
                    "expected a string, a request {'text' or 'messages', 'tools'} or a list of "
                    f"chat messages, got {type(x).__name__}"
                )
        return out

    def decide(
        self,
        model: LoadedModel | torch.nn.Module,
        tokenizer: Any,
        inputs: PromptInput | Sequence[PromptInput],
        *,
        rendered: bool = False,
        model_id: str | None = None,
        batch_size: int = 8,
        max_prompt_tokens: int | None = GenerationParams.max_prompt_tokens,
    ) -> list[Decision]:
        """Routed domain, p(tool) and gate per input, without generating (one per input, in order).

        No inputs (``[]``): no decisions. ``batch_size``: a whole number >= 1 (else ParamsError).
        A prompt longer than ``max_prompt_tokens`` (None: no cap) or the model's context raises
        :class:`~asa_lib.engine.prefix.PromptTooLongError` before the model runs.
        """
        check_batch_size(batch_size)
        lm = self._lm(model, tokenizer, model_id)
        return decide_prompts(
            lm,
            self.render(lm.tokenizer, inputs, rendered),
            self.gate,
            batch_size,
            max_prompt_tokens,
        )

    def generate(
        self,
        model: LoadedModel | torch.nn.Module,
        tokenizer: Any,
        inputs: PromptInput | Sequence[PromptInput],
        *,
        max_new_tokens: int = 128,
        rendered: bool = False,
        model_id: str | None = None,
        batch_size: int = 8,
        share_prefix: str = "auto",
        settings: GenerationSettings | None = None,
        max_prompt_tokens: int | None = GenerationParams.max_prompt_tokens,
    ) -> list[Generation]:
        """Steered greedy outputs, in order; a row stops at EOS or once its tool call is complete.

        Batched as the sweep batches (``share_prefix``: ``generation.share_prefix``'s
        auto|always|never). The tool-call markers that stop a row early come from
        the prompt format (LFM2's by default). ``settings`` (a
        :class:`~asa_lib.engine.generate.GenerationSettings`, e.g. resolved from a
        params file) replaces ``max_new_tokens``, ``batch_size``, ``share_prefix`` and
        ``max_prompt_tokens``. A prompt longer than ``max_prompt_tokens`` (None: no cap) or the
        model's context less ``max_new_tokens`` raises
        :class:`~asa_lib.engine.prefix.PromptTooLongError` before the model runs.
        """
        if settings is None:
            check_batch_size(batch_size)
        lm = self._lm(model, tokenizer, model_id)
        prompts = self.render(lm.tokenizer, inputs, rendered)
        if settings is None:
            settings = GenerationSettings.resolve(
                GenerationParams(
                    max_new_tokens,
                    batch_size,
                    share_prefix,
                    draft="off",
                    max_prompt_tokens=max_prompt_tokens,  # type: ignore[arg-type]
                ),
                self.prompt or PromptParams(),
                lm,
            )
        outs, decisions = generate_online(lm, prompts, self.gate, settings)
        return [Generation(o, d) for o, d in zip(outs, decisions)]


def request_of(request: Any, where: str = "request") -> tuple[str | Messages, list | None]:
    """``(text or checked messages, tools)`` of a request ``{"text": ...}`` or
    ``{"messages": [...]}``, with optional ``"tools": [...]``.

    Raises ``ValueError`` naming ``where`` and the field for a request that is not usable
    (no or both of text and messages, an empty text, bad messages, bad tools, another field).
    """
    if not isinstance(request, dict):
        raise ValueError(f"{where}: expected an object with 'text' or 'messages' (and 'tools')")
    unknown = set(request) - {"text", "messages", "tools"}
    if unknown:
        raise ValueError(
            f"{where}: unknown fields {sorted(unknown, key=str)} (expected text or messages, tools)"
        )
    if ("text" in request) == ("messages" in request):
        raise ValueError(
            f"{where}: give one of 'text' (a user turn) and 'messages' (a conversation)"
        )
    if "messages" in request:
        body: str | Messages = check_messages(request["messages"], f"{where}, field 'messages'")
    else:
        body = request["text"]
        if not isinstance(body, str):
            raise ValueError(f"{where}, field 'text': {type(body).__name__}, not a string")
        if not body.strip():
            raise ValueError(f"{where}, field 'text': empty")
    tools = request.get("tools")
    if tools is not None:
        problem = tool_list_problem(tools, "tools")
        if problem is not None:
            raise ValueError(f"{where}, field {problem}")
    return body, tools


def _is_messages(x: Any) -> bool:
    return (
        isinstance(x, list) and len(x) > 0 and all(isinstance(m, dict) and "role" in m for m in x)
    )


def run_prompt_format(folder: str | Path) -> PromptParams | None:
    """The prompt format in the params of the run folder the adapter sits in (``<run>/params.yaml``),
    if readable: the run's latest params, which a rerun rewrites at its start. An adapter that
    records its own format (:attr:`Bundle.prompt_format_sha256`) is checked against that instead."""
    path = Path(folder).parent / "params.yaml"
    if not path.is_file():
        return None
    try:
        return load_params(path, check_files=False).prompt
    except ParamsError:
        return None
