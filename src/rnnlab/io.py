"""Crash-safe file writing and defensive JSON reading.

Every file rnnlab produces is written through :func:`atomic_write_bytes`: the data goes to a
uniquely named temporary file in the destination's own directory, is flushed and fsynced,
and is then renamed over the destination with :func:`os.replace`, after which the directory
itself is fsynced. A crash, a full disk or Ctrl-C therefore leaves either the old complete
file or the new complete file, never a half-written one, and no temporary file behind.

Metrics are appended line by line with :func:`append_jsonl`; a line torn by a crash is
tolerated by :func:`read_jsonl` and cleaned up by the next append.

Every problem a user can cause (missing file, full disk, read-only location, invalid JSON)
raises :class:`rnnlab.errors.RnnlabError` with a one-line message naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Union

from rnnlab.errors import RnnlabError

PathLike = Union[str, "os.PathLike[str]"]

#: Largest JSON file :func:`read_json` will read (configs and vocabularies are far smaller).
MAX_JSON_BYTES = 16 * 2**20
#: Largest JSON-lines file :func:`read_jsonl` will read (a metrics log of a very long run).
MAX_JSONL_BYTES = 256 * 2**20

_DISK_FULL = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Return ``text`` with line breaks replaced by spaces, so a message stays one line."""
    return str(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def human_bytes(n: int) -> str:
    """Format a byte count for people, e.g. ``1536 -> '1.5 KB'``."""
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _strerror(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return one_line(text)


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(exc: OSError, path: PathLike, nbytes: int | None = None) -> RnnlabError:
    """Translate an :class:`OSError` raised while writing ``path`` into a one-line error.

    Parameters
    ----------
    exc : OSError
        The error the operating system reported.
    path : path-like
        The file that was being written.
    nbytes : int, optional
        How many bytes were being written, mentioned when the disk is full.

    Returns
    -------
    RnnlabError
        The error to raise (``raise write_error(e, path) from e``).
    """
    where = os.fspath(path)
    if exc.errno in _DISK_FULL:
        amount = f" {human_bytes(nbytes)}" if nbytes is not None else ""
        return RnnlabError(one_line(
            f"disk full while writing{amount} to {where}: free some disk space "
            f"or choose another output location, then try again"))
    if exc.errno in _NOT_WRITABLE:
        return RnnlabError(one_line(
            f"{where} is not writable ({_strerror(exc)}): choose a writable output location "
            f"or fix its permissions"))
    if exc.errno == errno.ENOENT:
        parent = os.path.dirname(os.path.abspath(where))
        return RnnlabError(one_line(
            f"cannot write {where}: directory {parent} does not exist"))
    if exc.errno == errno.ENOTDIR:
        return RnnlabError(one_line(
            f"cannot write {where}: a component of the path is a file, not a directory"))
    if exc.errno == errno.EISDIR:
        return RnnlabError(one_line(f"cannot write {where}: it is a directory"))
    return RnnlabError(one_line(f"cannot write {where}: {_strerror(exc)}"))


def _fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable; silently skipped where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) cannot fsync a directory; the rename stands
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    written = 0
    total = len(data)
    while written < total:
        n = os.write(fd, data[written:])
        if n <= 0:  # pragma: no cover - os.write raises instead on real systems
            raise OSError(errno.EIO, "write returned no progress")
        written += n


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file ``.<name>.<random>.tmp`` in the same directory, which is
    flushed, fsynced and renamed over ``path``; the directory is then fsynced. If anything
    fails (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    untouched. The new file gets the usual permissions (``0o666`` minus the umask), or the
    permissions of the file it replaces.

    Parameters
    ----------
    path : path-like
        Destination file. Its directory must already exist.
    data : bytes-like
        The complete new content.

    Raises
    ------
    RnnlabError
        If the file cannot be written (disk full, read-only location, missing directory ...).
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    view = memoryview(data).cast("B")
    if os.path.isdir(target):
        raise RnnlabError(one_line(f"cannot write {target}: it is a directory"))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise write_error(exc, target, len(view)) from exc
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = 0o666 & ~_current_umask()
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        _write_all(fd, view)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException as exc:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(exc, target, len(view)) from exc
        raise
    _fsync_directory(directory)


def atomic_write_dir(path: PathLike, files: "dict[str, bytes]", replace: bool = False) -> None:
    """Create directory ``path`` holding ``files`` (file name -> content) all at once.

    The files are written and fsynced in a temporary sibling directory ``.<name>.<random>.tmp``,
    which is then renamed to ``path``: readers see no directory or the complete one. With
    ``replace`` an existing ``path`` (file or directory) is first renamed aside, deleted once the
    new directory is in place, and put back if that rename fails. ``path``'s parent must exist.

    Raises
    ------
    RnnlabError
        If ``path`` exists and ``replace`` is false, or on any write error (nothing is left behind).
    """
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if os.path.lexists(target) and not replace:
        raise RnnlabError(one_line(f"{target} already exists; pass --force to replace it, or choose another path"))
    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise write_error(exc, target) from exc
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes it private; a directory's usual mode
        for fname, data in files.items():
            atomic_write_bytes(os.path.join(tmp, fname), data)
        if os.path.lexists(target):
            old = tmp + ".old"
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
                old = None
            raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(exc, target) from exc
        raise
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
    _fsync_directory(parent)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text`` (encoded with ``encoding``) to ``path``.

    See :func:`atomic_write_bytes` for the guarantees and errors.
    """
    atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    """Let NumPy scalars and arrays (anything with ``tolist``) serialise as plain JSON."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """Serialise ``obj`` as strict JSON (no NaN/Infinity); NumPy scalars become numbers.

    Raises
    ------
    ValueError, TypeError
        If ``obj`` holds a non-finite float or something JSON cannot represent; this is a
        programming error, so it is not turned into :class:`RnnlabError`.
    """
    try:
        return json.dumps(obj, indent=indent, allow_nan=False, default=_json_default,
                          ensure_ascii=False)
    except ValueError as exc:
        raise ValueError(f"cannot write JSON: {exc} (NaN and Infinity are not valid JSON; "
                         f"store None or a string instead)") from exc


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as UTF-8 JSON (with a final newline) to ``path``.

    ``obj`` is serialised before any file is touched, so a serialisation error leaves
    ``path`` as it was. NumPy scalars and arrays are converted to numbers and lists.

    Raises
    ------
    RnnlabError
        If the file cannot be written.
    ValueError, TypeError
        If ``obj`` is not JSON-serialisable or holds NaN/Infinity (a programming error).
    """
    atomic_write_bytes(path, (dumps_json(obj, indent) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------
# JSON lines (metrics)
# --------------------------------------------------------------------------------------------


def _torn_tail_start(fd: int, size: int) -> int:
    """Offset just after the last newline in the file (0 if none): where a torn line begins."""
    block = 65536
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        end = start
    return 0


def append_jsonl(path: PathLike, obj: Any) -> None:
    """Append ``obj`` as one JSON line to ``path`` and make it durable (flush + fsync).

    The line is written with a single ``write`` call. If a previous process died in the
    middle of a line (the file does not end with a newline), that torn fragment is cut off
    first, so the log stays one valid JSON object per line.

    Parameters
    ----------
    path : path-like
        The JSON-lines file; created if missing (its directory must exist).
    obj : JSON-serialisable
        Usually a dict of metrics. NumPy scalars are converted.

    Raises
    ------
    RnnlabError
        If the file cannot be written.
    ValueError, TypeError
        If ``obj`` is not JSON-serialisable (a programming error).
    """
    target = os.fspath(path)
    line = (dumps_json(obj) + "\n").encode("utf-8")
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise write_error(exc, target, len(line)) from exc
    start = None
    try:
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            size = _torn_tail_start(fd, size)
            os.ftruncate(fd, size)
        start = size
        _write_all(fd, memoryview(line))
        os.fsync(fd)
    except OSError as exc:
        if start is not None:  # e.g. disk full after part of the line: take the fragment back
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # read_jsonl skips a torn last line and the next append cuts it off
        raise write_error(exc, target, len(line)) from exc
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(text: str | bytes) -> Any:
    """Parse strict JSON: no NaN/Infinity, no duplicate keys.

    Raises
    ------
    ValueError
        For any invalid input, including text nested too deeply to parse (the caller turns
        this into a :class:`RnnlabError` that names the file).
    """
    try:
        return json.loads(text, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _describe_json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno} column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return _strerror(exc)


def open_regular(path: PathLike, what: str, max_bytes: int, too_large: str,
                 missing: str | None = None) -> tuple[int, int]:
    """Open a regular file of at most ``max_bytes`` bytes for reading: ``(fd, size)``.

    Opened non-blocking, so that a FIFO or device cannot hang the caller, and checked with
    ``fstat`` before anything is read. ``too_large`` (and ``missing``, if given) say what the
    user should do; they end the messages about a too-large (missing) file.

    Raises
    ------
    RnnlabError
        If the file is missing, not a regular file, unreadable or too large.
    """
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RnnlabError(one_line(f"{what} {where} not found" + (f"; {missing}" if missing else ""))) from None
    except IsADirectoryError:
        raise RnnlabError(one_line(f"{what} {where} is a directory, not a file")) from None
    except OSError as exc:
        raise RnnlabError(one_line(f"cannot read {what} {where}: {_strerror(exc)}")) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RnnlabError(one_line(f"{what} {where} is a directory, not a file"))
        if not stat.S_ISREG(info.st_mode):
            raise RnnlabError(one_line(f"{what} {where} is not a regular file"))
        if info.st_size > max_bytes:
            raise RnnlabError(one_line(
                f"{what} {where} is {human_bytes(info.st_size)}, more than the "
                f"{human_bytes(max_bytes)} limit; {too_large}"))
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_limited(path: PathLike, what: str, max_bytes: int, fix: str) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes, with one-line errors.

    The size is checked with ``fstat`` before anything is read, and the file is opened
    non-blocking so that a FIFO or device cannot hang the caller.

    Parameters
    ----------
    path : path-like
        The file to read.
    what : str
        What the file is, for messages (e.g. ``"run config"``).
    max_bytes : int
        Refuse larger files.
    fix : str
        What the user should do, appended to messages about a broken file.

    Raises
    ------
    RnnlabError
        If the file is missing, not a regular file, unreadable or too large.
    """
    where = os.fspath(path)
    fd, _ = open_regular(path, what, max_bytes, fix)
    try:
        chunks = []
        remaining = max_bytes + 1  # read one byte past the limit to notice growth
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise RnnlabError(one_line(
                f"{what} {where} is more than the {human_bytes(max_bytes)} limit; {fix}"))
        return data
    except OSError as exc:
        raise RnnlabError(one_line(f"cannot read {what} {where}: {_strerror(exc)}")) from exc
    finally:
        os.close(fd)


def read_json(path: PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES
              ) -> dict[str, Any]:
    """Read a JSON file that must hold an object.

    Parameters
    ----------
    path : path-like
        The file to read.
    what : str, default "JSON file"
        What the file is, used in messages: ``"run config"`` gives
        ``"run config runs/x/config.json is not valid JSON (...)"``.
    max_bytes : int, default :data:`MAX_JSON_BYTES`
        Files larger than this are refused before reading.

    Returns
    -------
    dict
        The parsed object.

    Raises
    ------
    RnnlabError
        If the file is missing, a directory, unreadable, too large, not UTF-8, not valid
        strict JSON (NaN/Infinity and duplicate keys are refused), or not a JSON object.
    """
    where = os.fspath(path)
    fix = "the file is damaged or not an rnnlab file; restore or recreate it"
    raw = read_limited(where, what, max_bytes, fix)
    try:
        obj = loads_strict(raw.decode("utf-8"))
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise RnnlabError(one_line(
            f"{what} {where} is not valid JSON ({_describe_json_error(exc)}); {fix}")) from None
    if not isinstance(obj, dict):
        raise RnnlabError(one_line(
            f"{what} {where} must hold a JSON object, found {_json_type(obj)}; {fix}"))
    return obj


def _json_type(obj: Any) -> str:
    if isinstance(obj, list):
        return "a list"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, (int, float)):
        return "a number"
    if obj is None:
        return "null"
    return type(obj).__name__


def read_jsonl(path: PathLike, what: str = "metrics log", max_bytes: int = MAX_JSONL_BYTES
               ) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects, tolerating a torn final line.

    A final line that is not newline-terminated or does not parse (a write interrupted by a
    crash) is skipped. Blank lines are ignored. Any other invalid line is corruption.

    Parameters
    ----------
    path : path-like
        The file to read.
    what : str, default "metrics log"
        What the file is, for messages.
    max_bytes : int, default :data:`MAX_JSONL_BYTES`
        Files larger than this are refused before reading.

    Returns
    -------
    list of dict
        One dict per complete line, in file order.

    Raises
    ------
    RnnlabError
        If the file is missing, unreadable, too large, or has an invalid line before the last.
    """
    where = os.fspath(path)
    fix = "the file is damaged; remove the bad line or delete the file"
    raw = read_limited(where, what, max_bytes, fix)
    # Everything after the last newline is an unterminated line: a write cut short. Drop it.
    body, newline, _torn = raw.rpartition(b"\n")
    lines = body.split(b"\n") if newline else []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)
        try:
            obj = loads_strict(line.decode("utf-8"))
        except ValueError as exc:
            if is_last:
                continue  # e.g. zero-filled tail after a power loss
            raise RnnlabError(one_line(
                f"{what} {where} line {number} is not valid JSON "
                f"({_describe_json_error(exc)}); {fix}")) from None
        if not isinstance(obj, dict):
            if is_last:
                continue
            raise RnnlabError(one_line(
                f"{what} {where} line {number} must be a JSON object, found {_json_type(obj)}"
                f"; {fix}"))
        records.append(obj)
    return records


def ensure_dir(path: PathLike, what: str = "directory") -> Path:
    """Create directory ``path`` (and parents) if needed, with a one-line error on failure.

    Raises
    ------
    RnnlabError
        If it cannot be created or exists as something other than a directory.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RnnlabError(one_line(f"{what} {p} exists and is not a directory"))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RnnlabError(one_line(f"{what} {p} exists and is not a directory")) from None
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise RnnlabError(one_line(
                f"cannot create {what} {p}: not writable ({_strerror(exc)}); choose a "
                f"writable location")) from exc
        if exc.errno == errno.ENOTDIR:
            raise RnnlabError(one_line(
                f"cannot create {what} {p}: a component of the path is a file")) from exc
        raise RnnlabError(one_line(f"cannot create {what} {p}: {_strerror(exc)}")) from exc
    return p


def check_writable(directory: PathLike) -> None:
    """Prove that files can be created in ``directory`` by creating and removing one.

    Raises
    ------
    RnnlabError
        If no file can be created there (read-only, no permission, disk full ...).
    """
    d = os.fspath(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rnnlab-write-test.", suffix=".tmp", dir=d)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise RnnlabError(one_line(
                f"output directory {d} is not writable ({_strerror(exc)}): choose a "
                f"writable location or fix its permissions")) from exc
        raise write_error(exc, os.path.join(d, "<new file>")) from exc
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
