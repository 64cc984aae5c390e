"""Provenance: the one module that hashes (sha256).

Every digest and fingerprint of the library is made here: the generation
cache's keys, the stage fingerprints, the bundle's ``sha256``, the prompt
format's sha256, the model's weights and tokenizer digests, file digests and
tool-set ids. Callers say *what* they hash (the parts, in order, and how long
a hex digest they keep); this module says *how*.

Two JSON forms are hashed, and both stay byte for byte as they were, since
their digests are stored (cache keys, ``adapter.json``, results) and compared
across runs:

- :func:`canonical_json`: keys sorted, no spaces, UTF-8; a value that is not
  JSON raises ``TypeError``. Data digests (:func:`json_digest`) and, with the
  key order kept, the prompt format.
- :func:`legacy_json`: ``json.dumps(obj, sort_keys=True, default=str)``:
  ASCII, json's default separators, any other value as its ``str``. The form
  the generation cache's context, the stage fingerprints and the bundle's
  ``sha256`` were first made with; a new digest should use
  :func:`canonical_json`.

Only the standard library: every layer may import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# A part of a digest: text (hashed as UTF-8) or bytes-like (bytes, memoryview, a
# contiguous array's buffer) as it is. Parts are concatenated with no separator:
# the caller adds its own (``"\0"``) where two parts could run into each other.
Part = str | bytes | bytearray | memoryview

HEX_LENGTH = 64  # a full sha256, in hex digits


class Hasher:
    """A sha256 fed part by part (see :data:`Part`); :meth:`hexdigest` cuts it to a length."""

    __slots__ = ("_h",)

    def __init__(self, *parts: Part) -> None:
        self._h = hashlib.sha256()
        self.update(*parts)

    def update(self, *parts: Part) -> Hasher:
        for p in parts:
            self._h.update(p.encode("utf-8") if isinstance(p, str) else p)
        return self

    def update_file(self, path: str | Path, chunk: int = 1 << 20) -> Hasher:
        """Add the bytes of the file at ``path``, read ``chunk`` bytes at a time."""
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                self._h.update(block)
        return self

    def hexdigest(self, length: int | None = None) -> str:
        """The hex digest, or its first ``length`` digits (1 to 64)."""
        if length is not None and not 1 <= length <= HEX_LENGTH:
            raise ValueError(f"a digest length is 1 to {HEX_LENGTH} hex digits, not {length}")
        return self._h.hexdigest()[:length]


def digest(*parts: Part, length: int | None = None) -> str:
    """The sha256 of ``parts`` concatenated (text as UTF-8), in hex, cut to ``length``."""
    return Hasher(*parts).hexdigest(length)


def text_digest(text: str, length: int | None = None) -> str:
    """The sha256 of ``text``'s UTF-8 bytes, in hex."""
    return digest(text, length=length)


def file_digest(path: str | Path) -> str:
    """The sha256 of the bytes of the file at ``path``, in hex (64 digits), read streaming."""
    return Hasher().update_file(path).hexdigest()


def canonical_json(obj: Any, *, sort_keys: bool = True) -> bytes:
    """``obj`` as compact JSON in UTF-8 (non-ASCII characters as themselves), keys sorted.

    With ``sort_keys=False`` the key order of ``obj`` is kept (the prompt format: a tool
    schema's key order is how it renders). A value that is not JSON raises ``TypeError``.
    """
    text = json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def json_digest(obj: Any, length: int | None = None) -> str:
    """The sha256 of ``obj``'s :func:`canonical_json`: where its keys came in, and how the
    file it was read from was formatted, do not change it."""
    return digest(canonical_json(obj), length=length)


ROW_DIGEST_LENGTH = 16  # hex digits of a row digest: 64 bits, no collision among a run's rows


def row_digest(text: str, tools: Any, length: int = ROW_DIGEST_LENGTH) -> str:
    """The sha256 of one request, its text and its tool list, cut to ``length`` hex digits.

    The tools as :func:`canonical_json` with their key order kept (the order the prompt
    renders), after the text and a ``"\\0"``: which prompt a row asks for, in a given
    prompt format. What an adapter records of its run's rows, to count them in an
    evaluation.
    """
    return digest(text, "\0", canonical_json(tools, sort_keys=False), length=length)


def legacy_json(obj: Any) -> bytes:
    """``json.dumps(obj, sort_keys=True, default=str)`` in ASCII: the form the cache context,
    the stage fingerprints and the bundle's sha256 hash (kept so that they stay as stored)."""
    return json.dumps(obj, sort_keys=True, default=str).encode()
