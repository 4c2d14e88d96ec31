"""Safe transport between the grader and a student's process: JSON for structure, safetensors for
tensors. Nothing is ever pickled, so decoding what a submission sent can only ever produce plain
data (None, bool, int, float, str, list, tuple, dict, torch.Tensor) and inert stand-ins.

A value is encoded as a JSON tree plus a dict of named tensors:

    None, bool, int, str       themselves (ints and strs within limits)
    float                      itself, or {"float": "nan" | "inf" | "-inf"}
    torch.Tensor               {"tensor": "t3"}, the data in the safetensors blob under "t3"
    FactoredMatrix             {"factored": [A, B]}: rebuilt as transformer_lens.FactoredMatrix(A, B)
                               (as a tuple (A, B) when the factors do not multiply)
    tuple / list / dict        {"tuple": [...]}, {"list": [...]}, {"dict": {"key": ...}} (str keys)
    anything else              {"opaque": "TypeName"}; decoded as an inert object of a class with
                               that name, so a check says "should be a torch.Tensor, but it is a
                               ndarray" exactly as it would in the notebook

Frames on a pipe: 4-byte big-endian length, JSON header; when the header has "blob": n, n bytes
of safetensors follow.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, BinaryIO, Optional

import torch

MAX_DEPTH = 16
MAX_ITEMS = 100_000  # nodes in one encoded value
MAX_STR = 100_000
MAX_HEADER = 64 * 2**20
# Tensor dtypes that safetensors stores losslessly.
DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool}


class CodecError(ValueError):
    """Malformed or oversized data from the other side."""


def encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON tree for ``value``; tensors are added to ``tensors`` (shared across calls)."""
    count = [0]

    def enc(v: Any, depth: int) -> Any:
        count[0] += 1
        if count[0] > MAX_ITEMS or depth > MAX_DEPTH:
            return {"opaque": "too large or too deeply nested"}
        if v is None or v is True or v is False:
            return v
        if isinstance(v, bool):  # a bool subclass
            return bool(v)
        if isinstance(v, int):
            v = int(v)
            return v if abs(v) < 2**63 else {"opaque": "int (too large)"}
        if isinstance(v, float):
            v = float(v)
            return v if math.isfinite(v) else {"float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(v, str):
            return str(v) if len(v) <= MAX_STR else {"opaque": "str (too long)"}
        if isinstance(v, torch.Tensor) and v.is_complex() and v.layout == torch.strided:
            # safetensors has no complex128: send the real and imaginary parts as two real tensors
            v = torch.Tensor.detach(v)
            return {"complex": [enc(v.real, depth + 1), enc(v.imag, depth + 1)]}
        if isinstance(v, torch.Tensor):
            if v.layout != torch.strided or v.dtype not in DTYPES or v.is_quantized:
                return {"opaque": f"Tensor ({v.layout}, {v.dtype})"}
            key = f"t{len(tensors)}"
            tensors[key] = torch.Tensor.detach(v).cpu().contiguous().clone()
            return {"tensor": key}
        if type(v).__name__ == "FactoredMatrix" and all(
                isinstance(getattr(v, f, None), torch.Tensor) for f in ("A", "B")):
            return {"factored": [enc(v.A, depth + 1), enc(v.B, depth + 1)]}
        if isinstance(v, tuple):
            return {"tuple": [enc(x, depth + 1) for x in v]}
        if isinstance(v, list):
            return {"list": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                return {"opaque": "dict (with non-string keys)"}
            return {"dict": {k: enc(x, depth + 1) for k, x in v.items()}}
        return {"opaque": type(v).__name__}

    return enc(value, 0)


class Opaque:
    """Stands in for a value that could not be sent (a numpy array, a custom object, ...)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object>"


_OPAQUE_CLASSES: dict[str, type] = {}


def opaque(type_name: str) -> Opaque:
    name = "".join(c for c in str(type_name) if c.isalnum() or c == "_")[:60] or "object"
    if name[0].isdigit():
        name = "_" + name
    if name not in _OPAQUE_CLASSES:
        _OPAQUE_CLASSES[name] = type(name, (Opaque,), {"type_name": str(type_name)[:100]})
    return _OPAQUE_CLASSES[name]()


def is_opaque(value: Any) -> bool:
    """True when ``value`` (or anything inside it) could not be sent as data."""
    if isinstance(value, Opaque):
        return True
    if isinstance(value, (tuple, list)):
        return any(is_opaque(v) for v in value)
    if isinstance(value, dict):
        return any(is_opaque(v) for v in value.values())
    return False


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``encode``; only plain data comes out. CodecError on anything unexpected."""
    count = [0]

    def dec(t: Any, depth: int) -> Any:
        count[0] += 1
        if count[0] > MAX_ITEMS or depth > MAX_DEPTH + 1:
            raise CodecError("value too large or too deeply nested")
        if t is None or isinstance(t, (bool, int, float, str)):
            return t
        if not isinstance(t, dict) or len(t) != 1:
            raise CodecError(f"unexpected node {str(t)[:80]}")
        (kind, body), = t.items()
        if kind == "tensor":
            if not isinstance(body, str) or body not in tensors:
                raise CodecError(f"missing tensor {str(body)[:40]}")
            if tensors[body].dtype not in DTYPES:  # the sender's allow-list may have been edited
                raise CodecError(f"tensor of dtype {tensors[body].dtype}")
            return tensors[body]
        if kind == "float":
            if body not in ("nan", "inf", "-inf"):
                raise CodecError(f"bad float {str(body)[:40]}")
            return float(body)
        if kind in ("tuple", "list"):
            if not isinstance(body, list):
                raise CodecError(f"bad {kind}")
            items = [dec(x, depth + 1) for x in body]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict":
            if not isinstance(body, dict):
                raise CodecError("bad dict")
            return {str(k): dec(x, depth + 1) for k, x in body.items()}
        if kind == "opaque":
            return opaque(str(body))
        if kind == "complex":
            if not isinstance(body, list) or len(body) != 2:
                raise CodecError("bad complex tensor")
            re, im = (dec(x, depth + 1) for x in body)
            if not (isinstance(re, torch.Tensor) and isinstance(im, torch.Tensor) and re.shape == im.shape
                    and re.dtype == im.dtype and re.dtype in (torch.float32, torch.float64)):
                raise CodecError("bad complex tensor")
            return torch.complex(re, im)
        if kind == "factored":
            if not isinstance(body, list) or len(body) != 2:
                raise CodecError("bad factored matrix")
            A, B = (dec(x, depth + 1) for x in body)
            if not (isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor)):
                raise CodecError("bad factored matrix")
            try:
                from transformer_lens import FactoredMatrix

                return FactoredMatrix(A, B)
            except Exception:  # factors that do not multiply: let the check say so
                return (A, B)
        raise CodecError(f"unknown node kind {kind[:40]!r}")

    return dec(tree, 0)


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    if not tensors:
        return b""
    from safetensors.torch import save

    return save(tensors)


def tensors_from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    if not blob:
        return {}
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CodecError(f"bad tensor data: {e}") from None


# --------------------------------------------------------------------------- frames


def pack_frame(header: dict, blob: bytes = b"") -> bytes:
    if blob:
        header = dict(header, blob=len(blob))
    data = json.dumps(header, allow_nan=False).encode()
    return struct.pack(">I", len(data)) + data + blob


def write_frame(fd: int, header: dict, blob: bytes = b"") -> None:
    """Write one frame to a raw file descriptor (os.write: no Python-level file objects)."""
    _write_all(fd, pack_frame(header, blob))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(stream: BinaryIO, n: int) -> Optional[bytes]:
    """n bytes, or None at a clean end of stream; CodecError when it ends mid-way."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            if got == 0:
                return None
            raise CodecError("stream ended inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, max_blob: int) -> Optional[tuple[dict, bytes]]:
    """(header, blob) or None at the end of the stream."""
    head = read_exact(stream, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    if length > MAX_HEADER:
        raise CodecError(f"frame header of {length} bytes")
    data = read_exact(stream, length)
    if data is None:
        raise CodecError("stream ended inside a frame")
    try:
        header = json.loads(data)
    except ValueError as e:
        raise CodecError(f"bad frame header: {e}") from None
    if not isinstance(header, dict):
        raise CodecError("frame header is not an object")
    size = header.get("blob", 0)
    if not isinstance(size, int) or size < 0 or size > max_blob:
        raise CodecError(f"frame payload of {size} bytes (limit {max_blob})")
    blob = read_exact(stream, size) if size else b""
    if size and blob is None:
        raise CodecError("stream ended inside a frame")
    return header, blob or b""
