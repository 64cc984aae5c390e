"""Generation cache shared by every config of a run (SQLite, one transaction per batch).

A row maps key -> generated text. The key hashes the cache's *context* (what
the run passes: the model's params, library versions), what decides an output
besides its prompt (:func:`asa_lib.engine.generate.output_context`: the
model's weights digest, tokenizer, generation config, device, max new tokens
and call markers), the full prompt text (with its tools) and the signed
steering delta with the block it is added at (``"none"`` without steering;
:func:`asa_lib.engine.generate.delta_key`). A prompt whose gate is 0 therefore
reuses the baseline output, and two configs with the same signed strength,
vector and layer share their outputs. Commits are atomic, so a killed process
leaves only whole batches behind.

Beside the text, the generated token ids are kept (table ``gen_tokens``, when
the writer gave them): draft-verified decoding uses the baseline's tokens as
a draft, and decoding then re-encoding a text does not always give back the
same tokens (invalid UTF-8 pieces, non-canonical splits).

``asa evaluate`` also keeps each row's state at the gate's block (table
``states``, float32; :func:`asa_lib.engine.extract.cached_last_token_states`),
one transaction per batch, so a killed evaluation resumes without reading a
row's state twice.

A cache file that is not an SQLite database, or cannot be written, is refused
when it is opened (:class:`CacheError`, naming the file): it holds only
outputs and states computed again from the model, so deleting it is always safe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from asa_lib.provenance import digest, legacy_json


def context_hash(context: dict[str, Any]) -> str:
    return digest(legacy_json(context), length=16)


def make_key(context: str, prompt: str, steer: str) -> str:
    return digest(context, "\0", prompt, "\0", steer, "\0")


class CacheError(RuntimeError):
    """A generation cache file that cannot be read or written; the message names it."""


class GenerationCache:
    def __init__(self, path: str | Path, context: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context = context_hash(context)
        with self._errors():
            self.db = sqlite3.connect(str(self.path), timeout=60)
        try:
            self._open()
        except CacheError:
            self.db.close()
            raise

    def _open(self) -> None:
        with self._errors():
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS gen (key TEXT PRIMARY KEY, output TEXT NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS gen_tokens (key TEXT PRIMARY KEY, ids BLOB NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, h BLOB NOT NULL)"
            )
            self.db.commit()
            # a read-only file opens and reads; fail now rather than after the first batch
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM gen WHERE key IS NULL")
            self.db.rollback()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """sqlite's errors as one :class:`CacheError` line that names the file and the fix."""
        try:
            yield
        except sqlite3.Error as e:
            raise CacheError(
                f"the generation cache {self.path} cannot be used ({e}). It holds only "
                "generated outputs and states: delete it (they are computed again), or make it "
                "writable."
            ) from None

    def _select(self, table: str, column: str, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        uniq = list(dict.fromkeys(keys))
        with self._errors():
            for s in range(0, len(uniq), 500):
                chunk = uniq[s : s + 500]
                q = f"SELECT key, {column} FROM {table} WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(dict(self.db.execute(q, chunk).fetchall()))
        return out

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return self._select("gen", "output", keys)

    def get_tokens_many(self, keys: list[str]) -> dict[str, list[int]]:
        """The generated token ids of those ``keys`` whose writer stored them."""
        return {
            k: np.frombuffer(v, dtype="<i8").tolist()
            for k, v in self._select("gen_tokens", "ids", keys).items()
        }

    def put_many(self, items: dict[str, str], tokens: dict[str, list[int]] | None = None) -> None:
        """Store outputs (and, optionally, their token ids) in one transaction."""
        with self._errors(), self.db:  # one transaction
            self.db.executemany(
                "INSERT OR REPLACE INTO gen (key, output) VALUES (?, ?)", list(items.items())
            )
            if tokens:
                self.db.executemany(
                    "INSERT OR REPLACE INTO gen_tokens (key, ids) VALUES (?, ?)",
                    [(k, np.asarray(v, dtype="<i8").tobytes()) for k, v in tokens.items()],
                )

    def get_states_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The stored states (float32 vectors) of those ``keys`` that have one."""
        return {
            k: np.frombuffer(v, dtype="<f4").copy()
            for k, v in self._select("states", "h", keys).items()
        }

    def put_states_many(self, items: dict[str, np.ndarray]) -> None:
        """Store states (one float32 vector each) in one transaction."""
        with self._errors(), self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO states (key, h) VALUES (?, ?)",
                [(k, np.asarray(v, dtype="<f4").tobytes()) for k, v in items.items()],
            )

    def __len__(self) -> int:
        with self._errors():
            return int(self.db.execute("SELECT COUNT(*) FROM gen").fetchone()[0])

    def close(self) -> None:
        self.db.close()
