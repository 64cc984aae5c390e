"""One owner of hashing (``asa_lib.provenance``), and every stored digest as it was.

Each recipe that was written with ``hashlib`` in its own module now calls the
provenance module. The values are stored (generation cache keys, ``adapter.json``'s
``sha256``, results' prompt-format sha256, output hashes) or compared across runs
(stage fingerprints), so each is checked here against the plain ``hashlib``
expression the recipe used to be, written out in the test, on a few inputs,
its length included. A few values computed by the code before the provenance
module (commit e734aa3) are pinned too.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asa_lib import provenance
from asa_lib.data.splits import tool_set_id
from asa_lib.engine.cache import context_hash, make_key
from asa_lib.engine.generate import delta_key
from asa_lib.files import file_digest as files_file_digest
from asa_lib.files import json_sha256
from asa_lib.method.bundle import _digest as bundle_digest
from asa_lib.model.load import gguf_cache_key, tokenizer_digest, weights_digest, weights_fingerprint
from asa_lib.model.lora import sha256_file
from asa_lib.params import PromptParams
from asa_lib.prompts import PROMPT_TOKENIZATION, prompt_format_sha256
from asa_lib.run import runner
from asa_lib.run.stages import hash_outputs

LIBRARY = Path(__file__).resolve().parents[1] / "asa_lib"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CONTEXTS = [
    {},
    {"b": 1, "a": [1.5, "é", None], "n": {"z": True, "y": (1, 2)}},
    {"path": Path("/models/x"), "weights": "ab" * 32, "max_new_tokens": 64},
]


@pytest.mark.parametrize("context", CONTEXTS)
def test_the_cache_context_hash_is_as_it_was(context):
    old = sha(json.dumps(context, sort_keys=True, default=str).encode())[:16]
    assert context_hash(context) == old and len(old) == 16


@pytest.mark.parametrize(
    "parts",
    [("abc", "héllo\nworld", "none"), ("", "", ""), ("a\0", "b", "c"), ("ctx", "p", "0f" * 16)],
)
def test_the_cache_key_is_as_it_was(parts):
    old = hashlib.sha256()
    for p in parts:
        old.update(p.encode("utf-8"))
        old.update(b"\x00")
    assert make_key(*parts) == old.hexdigest() and len(make_key(*parts)) == 64


def test_the_delta_key_is_as_it_was():
    rng = np.random.default_rng(0)
    for delta, layer in [(rng.standard_normal(16), 3), (rng.standard_normal(8), 11)]:
        for d in (delta, delta.astype(np.float32), list(delta)):
            old = hashlib.sha256(f"block {layer};".encode())
            old.update(np.ascontiguousarray(d, dtype=np.float32).tobytes())
            assert delta_key(np.asarray(d), layer) == old.hexdigest()[:32]
    assert delta_key(None, 3) == delta_key(np.zeros(4), 3) == "none"
    strided = rng.standard_normal((4, 6))[:, 1]  # not contiguous
    old = sha(b"block 2;" + np.ascontiguousarray(strided, dtype=np.float32).tobytes())[:32]
    assert delta_key(strided, 2) == old


@pytest.mark.parametrize(
    "parts", [(), ("a",), ("03_probing", ["f1", "f2"], {"b": 1, "a": "é"}, Path("/p"), 1.0, None)]
)
def test_the_stage_fingerprint_is_as_it_was(parts):
    old = hashlib.sha256()
    for p in parts:
        old.update(json.dumps(p, sort_keys=True, default=str).encode())
        old.update(b"\x00")
    assert runner.fingerprint(*parts) == old.hexdigest()[:20]


def test_the_library_source_hash_is_as_it_was(tmp_path):
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 'é'\n")
    (root / "notes.txt").write_text("not a source file")
    for r in (root, LIBRARY):
        old = hashlib.sha256()
        for p in sorted(r.rglob("*.py")):
            old.update(p.relative_to(r).as_posix().encode())
            old.update(p.read_bytes())
        assert runner.library_source_hash(r) == old.hexdigest()[:20]


def test_the_report_page_signature_is_as_it_was():
    stages = [SimpleNamespace(key=k) for k in ("01_data", "06_sweep__mild", "07_analysis")]
    for i in range(3):
        for mode in ("full", "reader"):
            page = runner._page(
                SimpleNamespace(root=Path("/r")), SimpleNamespace(name="demo é"), stages, i, mode
            )
            old = sha(f"{mode}\0{page['title']}\0{page['nav']}".encode())[:12]
            assert page["signature"] == old


def test_the_bundle_sha256_is_as_it_was(tmp_path):
    tensors = tmp_path / "adapter.safetensors"
    tensors.write_bytes(bytes(range(256)) * 5000)  # over one read chunk
    for meta in [{}, {"layer": 3, "sha256": "ignored", "model_id": "m é", "x": [1.0, 2]}]:
        fields = {k: v for k, v in meta.items() if k != "sha256"}
        old = hashlib.sha256(tensors.read_bytes())
        old.update(json.dumps(fields, sort_keys=True, default=str).encode())
        assert bundle_digest(tensors, meta) == old.hexdigest()


@pytest.mark.parametrize(
    "pp",
    [
        PromptParams(),
        PromptParams(
            system_template="Tools é: {tools_json}",
            tools=[{"name": "f", "parameters": {"type": "object", "properties": {}}, "b": 1}],
            demonstrations=[{"role": "user", "content": "x"}],
        ),
    ],
)
def test_the_prompt_format_sha256_is_as_it_was(pp):
    fmt = {
        "system_template": pp.system_template,
        "tools": pp.tools,
        "tool_call_start": pp.tool_call_start,
        "tool_call_end": pp.tool_call_end,
        "demonstrations": pp.demonstrations,
        "tools_in": pp.tools_in,
        "tokenization": PROMPT_TOKENIZATION,
    }
    old = sha(json.dumps(fmt, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    assert prompt_format_sha256(pp) == old


def _models():
    plain = torch.nn.Linear(2, 3).to(torch.float64)
    with torch.no_grad():
        plain.weight.copy_(torch.arange(6, dtype=torch.float64).reshape(3, 2))
        plain.bias.fill_(0.5)
    tied = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight
    return plain, tied


def test_the_weights_fingerprint_and_digest_are_as_they_were():
    plain, tied = _models()
    for m in (plain, tied):
        old = hashlib.sha256()
        for name, t in sorted(m.state_dict().items()):
            old.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        assert weights_fingerprint(m) == old.hexdigest()
    old = hashlib.sha256()
    for name, t in sorted(plain.state_dict().items()):
        old.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        old.update(t.contiguous().numpy().tobytes())
    assert weights_digest(plain) == old.hexdigest()
    w = tied[0].weight.detach()
    head = f"{tuple(w.shape)}:{w.dtype};"
    old = sha(
        f"0.weight:{head}".encode() + w.numpy().tobytes() + f"1.weight:{head}=0.weight;".encode()
    )
    assert weights_digest(tied) == old  # a tied weight is hashed once, then named


class _FastTokenizer:
    all_special_tokens = ["<s>"]
    backend_tokenizer = SimpleNamespace(
        to_str=lambda: json.dumps({"model": {"vocab": {"é": 1, "a": 0}}, "padding": {"x": 1}})
    )

    def __len__(self):
        return 2


class _SlowTokenizer:
    all_special_tokens = ["</s>", "<s>"]

    def get_vocab(self):
        return {"b": 1, "a": 0, "é": 2}

    def __len__(self):
        return 3


def test_the_tokenizer_digest_is_as_it_was():
    spec = {"model": {"vocab": {"é": 1, "a": 0}}}  # padding and truncation dropped
    assert tokenizer_digest(_FastTokenizer()) == sha(json.dumps(spec, sort_keys=True).encode())
    slow = [sorted({"b": 1, "a": 0, "é": 2}.items()), ["</s>", "<s>"]]
    assert tokenizer_digest(_SlowTokenizer()) == sha(json.dumps(slow).encode("utf-8"))


def test_the_gguf_cache_key_is_as_it_was(tmp_path):
    f = tmp_path / "model-q8.gguf"
    f.write_bytes(b"GGUF" * 100)
    os.utime(f, (1_700_000_000.7, 1_700_000_000.7))
    assert gguf_cache_key(f) == sha(b"model-q8.gguf:400:1700000000")[:16]


def test_file_digests_are_as_they_were(tmp_path):
    (tmp_path / "data").mkdir()  # a folder stage 01 writes (its output hashes below)
    big, empty = tmp_path / "data" / "big.bin", tmp_path / "data" / "empty"
    big.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several read chunks and a tail
    empty.write_bytes(b"")
    for f in (big, empty):
        want = sha(f.read_bytes())
        assert provenance.file_digest(f) == files_file_digest(f) == sha256_file(f) == want
    assert hash_outputs(tmp_path, "01_data")["data/big.bin"]["sha256"] == sha(big.read_bytes())


@pytest.mark.parametrize("obj", [{"b": [1, "é"], "a": None}, [], "x", {"z": {"y": 1, "x": 2.5}}])
def test_json_digests_and_tool_set_ids_are_as_they_were(obj):
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert json_sha256(obj) == provenance.json_digest(obj) == sha(text.encode("utf-8"))
    # a tool set's id keeps the key order it renders in (round 4, b2): as before where the
    # keys come sorted (the BFCL converter's rows), another id where they do not
    own = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    assert tool_set_id(obj) == "t" + sha(own.encode("utf-8"))[:12]
    assert (tool_set_id(obj) == "t" + sha(text.encode("utf-8"))[:12]) == (own == text)


def test_values_computed_before_the_provenance_module_are_unchanged():
    """Computed with the code of commit e734aa3 (each recipe's own hashlib call)."""
    assert context_hash({"model": "tiny", "n": 3, "path": Path("/m"), "é": [1.5, None]}) == (
        "8274f66a38936f2c"
    )
    assert make_key("0123456789abcdef", "Hello, é\n", "none") == (
        "ac5d3adfd6672e76fd9f78452c22f4a30db150578ca7a1714ebaad93a9a7ea77"
    )
    assert delta_key(np.array([0.5, -1.0, 2.0, 0.0]), 7) == "3b99f6b0e7f5f77f53ceb45ce9631857"
    assert runner.fingerprint("03_probing", ["abc"], {"b": 1, "a": "é"}) == "cbfd6f99c7b69e166938"
    assert json_sha256({"b": [1, "é"], "a": None}) == (
        "f8f17faab95c024891d173fa43442b0e52007736a1f36715ac721ab22deeefc5"
    )

    class Slow(_SlowTokenizer):
        all_special_tokens = ["<s>"]

        def get_vocab(self):
            return {"b": 1, "a": 0}

    assert tokenizer_digest(Slow()) == (
        "be452e0858a76cbcb669cc1542a736e2d75ba54b4db920fe41ca2d6e1ce712b1"
    )


def test_the_provenance_functions():
    assert provenance.digest() == sha(b"")
    assert provenance.digest("a", b"b", memoryview(b"c")) == sha(b"abc")  # no separator
    assert provenance.digest("é", length=12) == sha("é".encode())[:12]
    assert provenance.text_digest("é") == sha("é".encode())
    h = provenance.Hasher("a").update("b").update(b"c")
    assert h.hexdigest() == sha(b"abc") and h.hexdigest(20) == sha(b"abc")[:20]
    for bad in (0, 65, -1):
        with pytest.raises(ValueError, match="1 to 64"):
            provenance.digest("x", length=bad)
    obj = {"b": 1, "a": ["é"]}
    assert provenance.canonical_json(obj) == '{"a":["é"],"b":1}'.encode()
    assert provenance.canonical_json(obj, sort_keys=False) == '{"b":1,"a":["é"]}'.encode()
    assert provenance.legacy_json(obj) == b'{"a": ["\\u00e9"], "b": 1}'
    assert provenance.legacy_json({"p": Path("/x")}) == b'{"p": "/x"}'
    with pytest.raises(TypeError):
        provenance.canonical_json({"p": Path("/x")})
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
    want = sha("é\0".encode() + json.dumps(tools, separators=(",", ":")).encode())[:16]
    assert provenance.row_digest("é", tools) == want  # the key order kept, 16 hex digits
    assert provenance.row_digest("é", [dict(reversed(tools[0].items()))]) != want


def _hashlib_uses(path: Path) -> list[str]:
    """Lines of ``path`` that import ``hashlib`` or reach it (``hashlib.sha256``, ``from hashlib``)."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "hashlib" for a in node.names):
            uses.append(f"{node.lineno}: import hashlib")
        elif isinstance(node, ast.ImportFrom) and node.module == "hashlib":
            uses.append(f"{node.lineno}: from hashlib import ...")
        elif isinstance(node, ast.Name) and node.id == "hashlib":
            uses.append(f"{node.lineno}: hashlib")
    return uses


def test_only_the_provenance_module_hashes():
    """No module of the library but ``provenance`` imports or calls ``hashlib`` (no allow-list)."""
    found = {
        p.relative_to(LIBRARY).as_posix(): uses
        for p in sorted(LIBRARY.rglob("*.py"))
        if p.name != "provenance.py" or p.parent != LIBRARY
        if (uses := _hashlib_uses(p))
    }
    assert not found, f"hashing outside asa_lib/provenance.py: {found}"
    assert _hashlib_uses(LIBRARY / "provenance.py")  # the check sees a use where there is one
