"""A GGUF file's header (its key/values and tensor table), read with `struct` over an mmap.

gguf's `GGUFReader` builds a numpy view for every element of every array, the tokenizer's vocabulary
included: measured here, 3.9 s for SmolLM2's 49k tokens and 19 s for Gemma 3's 262k, paid by `slp model
add`, `pull` and the first look at any new file. This reads the same headers in 14 and 91 ms: numbers and
numeric arrays are unpacked whole, and string arrays nobody asked for are stepped over, not decoded.
gguf still names the tensor types and gives their sizes (imported only when the tensors are read), and
tests/test_models.py checks this reader against `GGUFReader` field by field on files gguf's own writer makes.

A file that is not a complete GGUF (bad magic, an unknown version or value type, a header or tensor data
cut short, duplicate names) raises `ValueError` with the reason.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    import gguf

# GGUF's value types (the file format's own numbers, as gguf.GGUFValueType has them) -> struct format.
# Kept here so that reading the key/values alone imports neither gguf nor numpy (the engine command reads
# a model's architecture and template this way, in the agent).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALARS = {_UINT8: "B", _INT8: "b", _UINT16: "H", _INT16: "h", _UINT32: "I", _INT32: "i", _FLOAT32: "f",
            _BOOL: "?", _UINT64: "Q", _INT64: "q", _FLOAT64: "d"}
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]  # as stored (innermost first)
    type: "gguf.GGMLQuantizationType"
    n_elements: int


@dataclass(frozen=True)
class Header:
    fields: dict[str, Any]  # key -> value; a string array not decoded is `Skipped`
    tensors: list[Tensor]  # empty when read without them
    data_offset: int  # -1 when read without the tensors


@dataclass(frozen=True)
class Skipped:
    """A string array stepped over (its length is known, its strings were not decoded)."""

    count: int


class _Cursor:
    """Reads values one after another from the mapped file, in the file's byte order."""

    def __init__(self, data: Union[mmap.mmap, bytes], order: str):
        self.data, self.order, self.at = data, order, 0
        self._u64 = struct.Struct(order + "Q")
        self._u32 = struct.Struct(order + "I")

    def take(self, n: int) -> bytes:
        end = self.at + n
        if n < 0 or end > len(self.data):
            raise ValueError("the header is cut short")
        chunk = self.data[self.at:end]
        self.at = end
        return chunk

    def u32(self) -> int:
        value = self._u32.unpack_from(self.data, self.at)[0]
        self.at += 4
        return value

    def u64(self) -> int:
        value = self._u64.unpack_from(self.data, self.at)[0]
        self.at += 8
        return value

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8")

    def skip_strings(self, count: int) -> None:
        data, unpack, at = self.data, self._u64.unpack_from, self.at
        for _ in range(count):
            at += 8 + unpack(data, at)[0]
        if at > len(data):
            raise ValueError("the header is cut short")
        self.at = at

    def value(self, kind: int, decode: bool) -> Any:
        if kind == _STRING:
            return self.string()
        fmt = _SCALARS.get(kind)
        if fmt is not None:
            size = struct.calcsize(fmt)
            return struct.unpack(self.order + fmt, self.take(size))[0]
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.u32(), self.u64()
        fmt = _SCALARS.get(item)
        if fmt is not None:
            size = struct.calcsize(fmt)
            return list(struct.unpack(f"{self.order}{count}{fmt}", self.take(size * count)))
        if item == _STRING and not decode:
            self.skip_strings(count)
            return Skipped(count)
        if item not in (_STRING, _ARRAY):
            raise ValueError(f"unknown value type {item}")
        return [self.value(item, decode) for _ in range(count)]


def read_header(path: Union[os.PathLike, str], decode: Callable[[str], bool] = lambda key: False,
                tensors: bool = True) -> Header:
    """The header of the GGUF file at `path`. String arrays are decoded only for keys `decode` accepts
    (the vocabulary is the bulk of a header and nobody here reads it). Without `tensors`, only the
    key/values are read (and neither gguf nor numpy is imported). Raises OSError, ValueError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError("the file is too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return _parse(data, size, decode, tensors)
            except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
                raise ValueError(f"the header is damaged ({exc.__class__.__name__}: {exc})") from None


def _parse(data: mmap.mmap, size: int, decode: Callable[[str], bool], with_tensors: bool) -> Header:
    if data[:4] != _MAGIC:
        raise ValueError("it does not start with GGUF's magic bytes")
    version = struct.unpack_from("<I", data, 4)[0]
    order = ">" if version & 0xFFFF == 0 else "<"  # a file written on a machine of the other byte order
    if order == ">":
        version = struct.unpack_from(">I", data, 4)[0]
    if version not in _VERSIONS:
        raise ValueError(f"GGUF version {version} is not one this reader knows ({', '.join(map(str, _VERSIONS))})")
    cursor = _Cursor(data, order)
    cursor.at = 8
    tensor_count, kv_count = cursor.u64(), cursor.u64()
    fields: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        if key in fields:
            raise ValueError(f"the key {key} appears twice")
        fields[key] = cursor.value(cursor.u32(), decode(key))
    if not with_tensors:
        return Header(fields, [], -1)
    import gguf  # the names of tensor types and their sizes

    tensors, names = [], set()
    for _ in range(tensor_count):
        name = cursor.string()
        if name in names:
            raise ValueError(f"the tensor {name} appears twice")
        names.add(name)
        dims = tuple(cursor.u64() for _ in range(cursor.u32()))
        kind, offset = gguf.GGMLQuantizationType(cursor.u32()), cursor.u64()
        n_elements = 1
        for dim in dims:
            n_elements *= dim
        tensors.append((Tensor(name, dims, kind, n_elements), offset))
    alignment = fields.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError("general.alignment is not a power of two")
    data_offset = -(-cursor.at // alignment) * alignment
    for tensor, offset in tensors:  # every tensor's bytes must be in the file (a cut download is not a model)
        block, block_bytes = gguf.GGML_QUANT_SIZES[tensor.type]
        end = data_offset + offset + tensor.n_elements // block * block_bytes
        if end > size:
            raise ValueError(f"the tensor data is cut short ({tensor.name} ends at byte {end} of {size})")
    return Header(fields, [tensor for tensor, _ in tensors], data_offset)
