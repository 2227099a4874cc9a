"""Model checkpoints: one safetensors file per checkpoint, written atomically, read defensively.

File format
-----------
A standard `safetensors <https://github.com/huggingface/safetensors>`_ file: an 8-byte
little-endian header length ``N``, ``N`` bytes of JSON describing every tensor (dtype, shape,
byte range), then the raw little-endian tensor data. rnnlab adds three entries to the
header's ``__metadata__`` (whose values must be strings):

``rnnlab_format``
    ``"1"``, the version of this layout.
``rnnlab``
    The caller's ``meta`` dict (step, config, vocabulary hash, losses ...) as one JSON string.
``rnnlab_sha256``
    A SHA-256 over the meta string and every tensor's name, dtype, shape and bytes, so that
    flipped bits anywhere are detected instead of silently producing a different model.

Loading never executes code (no pickle anywhere) and never allocates memory a file merely
claims to need: the header is parsed and validated by hand (sizes, dtypes, shapes, byte
ranges that tile the data region exactly, total size against the file size) and compared with
the tensors the caller expects before a single tensor is allocated.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Mapping

import numpy as np

from rnnlab.errors import RnnlabError
from rnnlab.io import (PathLike, atomic_write_bytes, dumps_json, human_bytes, loads_strict, open_regular,
                       one_line)

#: Checkpoints larger than this are refused by default (char-level models are far smaller).
DEFAULT_MAX_BYTES = 2**30
#: Largest header accepted; a real rnnlab header is a few kilobytes.
MAX_HEADER_BYTES = 4 * 2**20
#: Value of ``__metadata__["rnnlab_format"]`` written by this version.
FORMAT_VERSION = "1"

#: safetensors dtype codes rnnlab reads and writes, with their little-endian NumPy dtypes.
DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "U64": np.dtype("<u8"), "BOOL": np.dtype("?"),
}
_CODE_OF = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}

_MAX_NDIM = 32            # NumPy 1.x limit
_MAX_ELEMENTS = 2**48     # bound on the product of the non-zero dims (keeps NumPy happy)

_FIX = "use the other checkpoint (--checkpoint last|best) or retrain"
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

Shape = tuple[int, ...]
Expected = Mapping[str, tuple[Any, Any]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _numpy_dtype(spec: Any) -> np.dtype:
    """A dtype from a safetensors code (``"F32"``) or anything NumPy accepts (``"float32"``)."""
    if isinstance(spec, str) and spec in DTYPES:
        return DTYPES[spec].newbyteorder("=")
    return np.dtype(spec).newbyteorder("=")


def _fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _digest(meta_json: str, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the meta string and each tensor's name, dtype code, shape and bytes."""
    h = hashlib.sha256()

    def field(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    field(b"rnnlab-checkpoint-" + FORMAT_VERSION.encode())
    field(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        arr = tensors[name]
        field(name.encode("utf-8"))
        field(_CODE_OF[arr.dtype.newbyteorder("=")].encode())
        field(",".join(str(d) for d in arr.shape).encode())
        field(memoryview(np.require(arr, requirements="C")).cast("B") if arr.size else b"")
    return h.hexdigest()


def _to_little_endian(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray) and hasattr(value, "get"):
        value = value.get()  # a CuPy array: copy to the host
    arr = np.asarray(value)
    key = arr.dtype.newbyteorder("=")
    if key not in _CODE_OF:
        raise TypeError(f"tensor {name!r} has dtype {arr.dtype}, which checkpoints do not store "
                        f"(allowed: {', '.join(sorted(str(d) for d in _CODE_OF))})")
    return np.require(arr, dtype=DTYPES[_CODE_OF[key]], requirements="C")


def _first_nonfinite(tensors: Mapping[str, np.ndarray]) -> str | None:
    for name in sorted(tensors):
        arr = tensors[name]
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            return name
    return None


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: PathLike, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` to one safetensors file, atomically.

    Parameters
    ----------
    path : path-like
        Destination, e.g. ``run/checkpoints/last.safetensors``. Its directory must exist. The
        previous file stays intact until the new one is complete (see
        :func:`rnnlab.io.atomic_write_bytes`).
    tensors : mapping of str to array
        Parameter arrays (NumPy, or CuPy which is copied to the host). Allowed dtypes:
        float16/32/64, int8/16/32/64, uint8/16/32/64, bool.
    meta : mapping
        JSON-serialisable information stored with the tensors (no NaN/Infinity).

    Raises
    ------
    RnnlabError
        If a float tensor holds NaN or Inf (training diverged: the last good checkpoint is kept
        rather than overwritten), or if the file cannot be written (disk full, read-only ...).
    TypeError, ValueError
        For invalid arguments (bad names or dtypes, meta that is not JSON): programming errors.
    """
    from safetensors.numpy import save as _st_save

    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        arrays[name] = _to_little_endian(name, value)
    bad = _first_nonfinite(arrays)
    if bad is not None:
        raise RnnlabError(one_line(
            f"refusing to save checkpoint {os.fspath(path)}: tensor {bad!r} contains NaN/Inf "
            f"(training diverged); the previous checkpoint was kept - lower the learning rate "
            f"or enable gradient clipping and retrain"))
    meta_json = dumps_json(dict(meta))
    header_meta = {
        "rnnlab_format": FORMAT_VERSION,
        "rnnlab": meta_json,
        "rnnlab_sha256": _digest(meta_json, arrays),
    }
    data = _st_save(arrays, metadata=header_meta)
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: np.dtype, shape: Shape, begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


class _Header:
    __slots__ = ("entries", "meta", "meta_json", "digest", "data_start", "data_len")

    def __init__(self, entries: list[_Entry], meta: dict[str, Any], meta_json: str, digest: str,
                 data_start: int, data_len: int):
        self.entries, self.meta, self.meta_json, self.digest = entries, meta, meta_json, digest
        self.data_start, self.data_len = data_start, data_len


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(name: str, info: Any, data_len: int, bad) -> _Entry:
    if not isinstance(info, dict):
        raise bad(f"entry for tensor {name!r} is not an object")
    if set(info) != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - set(info))
        extra = sorted(set(info) - _ENTRY_KEYS)
        what = f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(extra)}"
        raise bad(f"entry for tensor {name!r} {what}")
    code = info["dtype"]
    if not isinstance(code, str) or code not in DTYPES:
        raise bad(f"tensor {name!r} has unsupported dtype {str(code)[:20]!r}")
    dtype = DTYPES[code]
    shape = info["shape"]
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise bad(f"tensor {name!r} has an invalid shape")
    if math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        raise bad(f"tensor {name!r} declares an impossible shape")
    offsets = info["data_offsets"]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)):
        raise bad(f"tensor {name!r} has invalid data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"tensor {name!r} lies outside the file's data (the file may be truncated)")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise bad(f"tensor {name!r} byte range does not match its shape and dtype")
    return _Entry(name, dtype, tuple(shape), begin, end)


def _parse_header(raw: bytes, data_start: int, data_len: int, bad) -> _Header:
    try:
        obj = loads_strict(raw.decode("utf-8"))
    except ValueError:  # includes UnicodeDecodeError
        raise bad("header is not valid JSON") from None
    if not isinstance(obj, dict):
        raise bad("header is not a JSON object")
    metadata = obj.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("it was not written by rnnlab (no rnnlab metadata)")
    fmt = metadata.get("rnnlab_format")
    if fmt is None or "rnnlab" not in metadata or "rnnlab_sha256" not in metadata:
        raise bad("it was not written by rnnlab (no rnnlab metadata)")
    if fmt != FORMAT_VERSION:
        raise bad(f"its format {fmt[:20]!r} is not one this rnnlab reads (format "
                  f"{FORMAT_VERSION}; a newer rnnlab may read it)")
    meta_json = metadata["rnnlab"]
    try:
        meta = loads_strict(meta_json)
    except ValueError:
        raise bad("its rnnlab metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise bad("its rnnlab metadata is not a JSON object")
    entries = [_parse_entry(name, info, data_len, bad) for name, info in obj.items()]
    # The byte ranges must tile the data region exactly: no gaps, no overlaps, nothing extra.
    position = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != position:
            raise bad("tensor byte ranges overlap or leave gaps")
        position = e.end
    if position != data_len:
        raise bad(f"data region is {data_len} bytes but tensors cover {position}")
    return _Header(entries, meta, meta_json, metadata["rnnlab_sha256"], data_start, data_len)


def _open_checkpoint(path: PathLike, max_bytes: int):
    """Open ``path`` for reading and return ``(file, size, bad)`` after basic checks."""
    where = os.fspath(path)

    def bad(reason: str) -> RnnlabError:
        return RnnlabError(one_line(
            f"checkpoint {where} is corrupt or incomplete: {reason}; {_FIX}"))

    fd, size = open_regular(where, "checkpoint", max_bytes, "if you trust this file, raise the limit",
                            missing=_FIX)
    try:
        if size == 0:
            raise bad("the file is empty")
        if size < 8:
            raise bad("the file is too short")
        fh = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    return fh, size, bad


def _read_exact(fh, n: int, bad) -> bytes:
    data = fh.read(n)
    if data is None or len(data) != n:
        raise bad("the file ended early (truncated)")
    return data


def _read_header(fh, size: int, bad) -> _Header:
    n = int.from_bytes(_read_exact(fh, 8, bad), "little")
    if n > size - 8:
        raise bad("its header length points past the end of the file")
    if n > MAX_HEADER_BYTES:
        raise bad(f"its header claims {human_bytes(n)}, more than {human_bytes(MAX_HEADER_BYTES)}")
    if n < 2:
        raise bad("its header is empty")
    raw = _read_exact(fh, n, bad)
    return _parse_header(raw, 8 + n, size - 8 - n, bad)


def _check_expected(where: str, header: _Header, expected: Expected) -> None:
    found = {e.name: e for e in header.entries}
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]

    def names(ns: list[str]) -> str:
        shown = ", ".join(repr(n) for n in ns[:5])
        return shown + (f" and {len(ns) - 5} more" if len(ns) > 5 else "")

    tail = "the checkpoint was made for a different model (check config.json) - retrain or " \
           "use the matching config"
    if missing or extra:
        parts = ([f"missing tensor(s) {names(missing)}"] if missing else []) + \
                ([f"unexpected tensor(s) {names(extra)}"] if extra else [])
        raise RnnlabError(one_line(
            f"checkpoint {where} does not fit this model: {', '.join(parts)}; {tail}"))
    for name, (shape, dtype) in expected.items():
        e = found[name]
        want_shape = tuple(int(d) for d in shape)
        if e.shape != want_shape:
            raise RnnlabError(one_line(
                f"checkpoint {where} does not fit this model: tensor {name!r} has shape "
                f"{_fmt_shape(e.shape)}, expected {_fmt_shape(want_shape)}; {tail}"))
        want_dtype = _numpy_dtype(dtype)
        if e.dtype.newbyteorder("=") != want_dtype:
            raise RnnlabError(one_line(
                f"checkpoint {where} does not fit this model: tensor {name!r} has dtype "
                f"{e.dtype.newbyteorder('=')}, expected {want_dtype}; {tail}"))


def inspect_checkpoint(path: PathLike, max_bytes: int = DEFAULT_MAX_BYTES
                       ) -> tuple[dict[str, tuple[Shape, str]], dict[str, Any]]:
    """Read and validate a checkpoint's header only (no tensor data is read or checksummed).

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    max_bytes : int, default :data:`DEFAULT_MAX_BYTES`
        Larger files are refused.

    Returns
    -------
    tensors : dict
        ``name -> (shape, dtype name)``, e.g. ``{"embed.W": ((65, 32), "float32")}``: the
        same form :func:`load_checkpoint` takes as ``expected``.
    meta : dict
        The ``meta`` dict given to :func:`save_checkpoint`.

    Raises
    ------
    RnnlabError
        If the file is missing, too large or its header is corrupt.
    """
    fh, size, bad = _open_checkpoint(path, max_bytes)
    with fh:
        header = _read_header(fh, size, bad)
    specs = {e.name: (e.shape, str(e.dtype.newbyteorder("="))) for e in
             sorted(header.entries, key=lambda e: e.name)}
    return specs, header.meta


def load_checkpoint(path: PathLike, expected: Expected | None = None,
                    max_bytes: int = DEFAULT_MAX_BYTES
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`, trusting nothing in the file.

    Order of checks: the file is a regular file of at most ``max_bytes``; the header length
    is sane; the header is a JSON object whose entries have allowed dtypes, valid shapes and
    byte ranges that exactly tile the data region; the names, shapes and dtypes match
    ``expected``. Only then is memory allocated (exactly what the file holds) and the data
    read, after which the SHA-256 is verified and float tensors are checked for NaN/Inf.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    expected : mapping, optional
        ``name -> (shape, dtype)`` the caller's model needs; dtype as a NumPy name
        (``"float32"``) or a safetensors code (``"F32"``). When given, the file must hold
        exactly these tensors with exactly these shapes and dtypes.
    max_bytes : int, default :data:`DEFAULT_MAX_BYTES`
        Larger files are refused without being read.

    Returns
    -------
    tensors : dict of str to numpy.ndarray
        Fresh, writable, aligned arrays in native byte order, sorted by name.
    meta : dict
        The ``meta`` dict given to :func:`save_checkpoint`.

    Raises
    ------
    RnnlabError
        With a one-line message naming the file: missing, a directory, too large, truncated,
        corrupt (garbage, flipped bits, checksum mismatch), not an rnnlab checkpoint, not
        matching ``expected``, or holding NaN/Inf.
    """
    where = os.fspath(path)
    fh, size, bad = _open_checkpoint(where, max_bytes)
    with fh:
        header = _read_header(fh, size, bad)
        if expected is not None:
            _check_expected(where, header, expected)
        arrays: dict[str, np.ndarray] = {}
        for e in sorted(header.entries, key=lambda e: (e.begin, e.end)):
            arr = np.empty(e.shape, dtype=e.dtype)
            if arr.nbytes:
                view = memoryview(arr).cast("B")
                got = fh.readinto(view)
                while got is not None and 0 < got < arr.nbytes:
                    more = fh.readinto(view[got:])
                    if not more:
                        break
                    got += more
                if got != arr.nbytes:
                    raise bad("the file ended early (truncated)")
            arrays[e.name] = arr
    if _digest(header.meta_json, arrays) != header.digest:
        raise bad("checksum mismatch (the file was damaged after it was written)")
    for name, arr in arrays.items():
        if arr.dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
            raise bad(f"tensor {name!r} holds invalid booleans")
    bad_name = _first_nonfinite(arrays)
    if bad_name is not None:
        raise RnnlabError(one_line(
            f"checkpoint {where} contains NaN/Inf in tensor {bad_name!r}; {_FIX}"))
    native = {name: arrays[name].astype(arrays[name].dtype.newbyteorder("="), copy=False)
              for name in sorted(arrays)}
    return native, header.meta
