"""safetensors files read and written one tensor at a time, in pure NumPy.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N, N bytes of
JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`
(offsets relative to the end of the header), then the raw little-endian tensor bytes. Because
every shape is known before any data is written, `StreamWriter` writes the header first and then
each tensor as it arrives, so a merge holds one tensor at a time; `Reader` maps the file and
returns one tensor (or a region of one) without reading the rest. MindSpore's
`load_checkpoint(format="safetensors")` and the `safetensors` package read what it writes (tested);
`__metadata__` carries `{"format": "ms"}` as MindSpore writes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pangu_ms.errors import CheckpointError

# safetensors dtype <-> our dtype name; bfloat16 travels as raw 16-bit words (NumPy has no bf16)
ST_TO_NAME = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
NAME_TO_ST = {v: k for k, v in ST_TO_NAME.items()}
_NUMPY = {"bfloat16": np.dtype("<u2"), "bool": np.dtype("?")}
ALIGN = 8


def numpy_dtype(name: str) -> np.dtype:
    return _NUMPY.get(name) or np.dtype(name).newbyteorder("<")


def dtype_name(arr_dtype: np.dtype) -> str:
    return "bool" if arr_dtype == np.bool_ else np.dtype(arr_dtype).name


class Reader:
    """Random access to the tensors of one safetensors file (memory-mapped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                raw = f.read(8)
                (n,) = struct.unpack("<Q", raw)
                header = json.loads(f.read(n))
            self.size = self.path.stat().st_size
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({exc}); the file is truncated "
                                  "or corrupt") from None
        self.data_start = 8 + n
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self.entries: dict[str, dict[str, Any]] = header
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self.data_start + end > self.size:
            raise CheckpointError(f"{self.path}: the header describes {self.data_start + end} bytes but the file has "
                                  f"{self.size}: truncated")
        self._map: np.memmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(dtype name, shape) of tensor `name`."""
        e = self._entry(name)
        return ST_TO_NAME.get(e["dtype"], e["dtype"]), tuple(e["shape"])

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor '{name}'") from None

    def view(self, name: str) -> np.ndarray:
        """Tensor `name` as a read-only view of the mapped file (no copy; pages load on access)."""
        dtype, shape = self.info(name)
        begin, end = self._entry(name)["data_offsets"]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map[self.data_start + begin:self.data_start + end].view(numpy_dtype(dtype)).reshape(shape)

    def read(self, name: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Tensor `name` (or its `region`) as a new array; only the bytes needed are touched."""
        arr = self.view(name)
        return np.array(arr if region is None else arr[region])

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read tensor `name` into `out` (its shape) with plain file reads: nothing stays mapped, so
        reading many files one tensor at a time keeps the process small."""
        dtype, shape = self.info(name)
        if tuple(out.shape) != shape:
            raise CheckpointError(f"{self.path}: tensor '{name}' is {shape}, not {tuple(out.shape)}")
        begin, end = self._entry(name)["data_offsets"]
        dest = out if out.flags.c_contiguous else np.empty(shape, numpy_dtype(dtype))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + begin)
            view = memoryview(dest.reshape(-1).view(np.uint8)) if dest.size else memoryview(b"")
            got = f.readinto(view) if dest.size else 0
        if got != end - begin:
            raise CheckpointError(f"{self.path}: tensor '{name}' is truncated ({got} of {end - begin} bytes)")
        if dest is not out:
            out[...] = dest

    def close(self) -> None:
        self._map = None


class StreamWriter:
    """Write a safetensors file whose tensors (name, dtype, shape) are known up front.

    `write(name, array)` in the declared order; `close()` checks that every tensor came, fsyncs
    and renames the temporary file into place (a crash leaves no half-written file under the final
    name). `sha256` and `nbytes` describe the finished file.
    """

    def __init__(self, path: str | Path, entries: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        from pangu_ms.checkpoint.layout import itemsize

        self.path = Path(path)
        self.order: list[tuple[str, str, tuple[int, ...]]] = [(n, d, tuple(s)) for n, d, s in entries]
        header: dict[str, Any] = {"__metadata__": {"format": "ms", **(metadata or {})}}
        offset = 0
        for name, dtype, shape in self.order:
            if dtype not in NAME_TO_ST:
                raise CheckpointError(f"tensor '{name}': dtype {dtype!r} cannot be stored in safetensors")
            n = int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)
            header[name] = {"dtype": NAME_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % ALIGN)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._hash = hashlib.sha256()
        self._put(struct.pack("<Q", len(blob)) + blob)
        self._next = 0
        self.nbytes = 0

    def _put(self, data) -> None:
        self._f.write(data)
        self._hash.update(data)

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self.order):
            raise CheckpointError(f"{self.path}: tensor '{name}' was not declared")
        want, dtype, shape = self.order[self._next]
        if name != want or tuple(array.shape) != shape:
            raise CheckpointError(f"{self.path}: expected tensor '{want}' {shape}, got '{name}' {tuple(array.shape)}")
        if dtype_name(array.dtype) != dtype and not (dtype == "bfloat16" and array.dtype == np.uint16):
            raise CheckpointError(f"{self.path}: tensor '{name}' is {array.dtype}, declared {dtype}")
        buf = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        self._put(memoryview(buf).cast("B") if buf.ndim else buf.tobytes())  # no copy of a contiguous array
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            missing = self.order[self._next][0]
            self.abort()
            raise CheckpointError(f"{self.path}: closed before tensor '{missing}' was written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.nbytes = self._f.tell()
        self._f.close()
        os.replace(self.tmp, self.path)
        self.sha256 = self._hash.hexdigest()

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_sha256(path: str | Path, chunk: int = 1 << 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
