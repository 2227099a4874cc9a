"""The run directory: where one training run keeps its files, and who may write there.

Layout::

    RUN/
      config.json                   the training configuration
      vocab.json                    the character vocabulary
      metrics.jsonl                 one JSON object per logged step (append-only)
      checkpoints/last.safetensors  the most recent checkpoint
      checkpoints/best.safetensors  the checkpoint with the best validation loss
      loss.png                      the loss curves
      .rnnlab.lock                  advisory lock held by the training process (holds its pid)
      replaced-YYYYmmdd-HHMMSS/     an earlier run's files, moved aside by ``--force``

Policies
--------
* A directory that already holds a run is never reused silently: ``--resume`` continues that
  run, ``--force`` starts a new one in its place.
* ``--force`` deletes nothing. After the new run holds the lock, the old run's files
  (``config.json``, ``vocab.json``, ``metrics.jsonl``, ``loss.png``, ``checkpoints/``) are
  *moved* into a fresh ``replaced-<time>/`` sub-directory, so the new run starts clean (no
  stale ``best`` checkpoint, no old metrics) and the old run can still be recovered. Delete
  ``replaced-*`` yourself once you no longer need it.
* Only one rnnlab process trains in a run directory at a time (``fcntl.flock`` on
  ``.rnnlab.lock``, non-blocking; released automatically when the process exits, even if it
  crashes). On platforms without ``fcntl`` the lock is a no-op.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from rnnlab.errors import RnnlabError
from rnnlab.io import (PathLike, check_writable, ensure_dir, one_line, read_json, write_error)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOSS_PLOT = "loss.png"
LOCK = ".rnnlab.lock"
CHECKPOINT_NAMES = ("last", "best")
CHECKPOINT_SUFFIX = ".safetensors"

_RUN_FILES = (CONFIG, VOCAB, METRICS, LOSS_PLOT)


class RunDir:
    """Names the files of one run directory and guards access to it.

    Creating a ``RunDir`` touches nothing on disk; use :meth:`create` to start or resume
    training there and :meth:`check_complete` before reading a finished run.

    Parameters
    ----------
    path : path-like
        The run directory.

    Examples
    --------
    >>> with RunDir.create("runs/shakespeare") as run:   # doctest: +SKIP
    ...     atomic_write_json(run.config, config)
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- names ---------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        """``config.json``: the training configuration."""
        return self.path / CONFIG

    @property
    def vocab(self) -> Path:
        """``vocab.json``: the vocabulary."""
        return self.path / VOCAB

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: the append-only metrics log."""
        return self.path / METRICS

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``."""
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        """``checkpoints/last.safetensors``."""
        return self.checkpoint_path("last")

    @property
    def best(self) -> Path:
        """``checkpoints/best.safetensors``."""
        return self.checkpoint_path("best")

    @property
    def loss_plot(self) -> Path:
        """``loss.png``."""
        return self.path / LOSS_PLOT

    @property
    def lock_file(self) -> Path:
        """``.rnnlab.lock``: the advisory lock file."""
        return self.path / LOCK

    def checkpoint_path(self, which: str) -> Path:
        """Path of checkpoint ``which`` (``"last"`` or ``"best"``), whether or not it exists.

        Raises
        ------
        RnnlabError
            If ``which`` is not ``"last"`` or ``"best"``.
        """
        if which not in CHECKPOINT_NAMES:
            raise RnnlabError(one_line(
                f"unknown checkpoint {which!r}: choose one of {', '.join(CHECKPOINT_NAMES)}"))
        return self.checkpoints_dir / f"{which}{CHECKPOINT_SUFFIX}"

    # ---- state ---------------------------------------------------------------------------

    def available_checkpoints(self) -> list[str]:
        """Names (``"last"``, ``"best"``) of the checkpoints that exist as regular files."""
        return [w for w in CHECKPOINT_NAMES if self.checkpoint_path(w).is_file()]

    def has_run(self) -> bool:
        """Whether the directory holds any file of a run (an empty ``checkpoints/`` or a lone
        lock file left by a run that died before writing anything do not count)."""
        return (any((self.path / name).exists() for name in _RUN_FILES)
                or bool(self.available_checkpoints()))

    def check_complete(self) -> None:
        """Check that a finished or running run can be read (for sample, eval and info).

        Raises
        ------
        RnnlabError
            If the directory is missing or not a directory, or lacks ``config.json``,
            ``vocab.json`` or every checkpoint; the message says what is missing.
        """
        p = self.path
        if not p.exists():
            raise RnnlabError(one_line(
                f"run directory {p} does not exist; check the path or train a model there first"))
        if not p.is_dir():
            raise RnnlabError(one_line(f"run directory {p} is not a directory"))
        missing = [name for name, f in ((CONFIG, self.config), (VOCAB, self.vocab))
                   if not f.is_file()]
        if not self.available_checkpoints():
            missing.append(f"a checkpoint ({CHECKPOINTS}/last{CHECKPOINT_SUFFIX} or "
                           f"{CHECKPOINTS}/best{CHECKPOINT_SUFFIX})")
        if not missing:
            return
        if not self.has_run():
            raise RnnlabError(one_line(
                f"{p} holds no rnnlab run (no {CONFIG}, {VOCAB} or checkpoint); check the path "
                f"or train a model there first"))
        raise RnnlabError(one_line(
            f"run directory {p} is incomplete: missing {', '.join(missing)}; the run may not "
            f"have finished its first checkpoint yet - wait for it, or retrain"))

    def find_checkpoint(self, which: str = "last") -> Path:
        """Path of checkpoint ``which``, which must exist.

        Raises
        ------
        RnnlabError
            If the run is incomplete, or ``which`` does not exist (the message names the
            checkpoint that does).
        """
        path = self.checkpoint_path(which)
        if path.is_file():
            return path
        self.check_complete()
        others = [w for w in self.available_checkpoints() if w != which]
        raise RnnlabError(one_line(
            f"run {self.path} has no {which} checkpoint yet ({path} is missing); "
            f"use --checkpoint {others[0]}" if others else
            f"run {self.path} has no {which} checkpoint ({path} is missing); retrain"))

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict (see :func:`rnnlab.io.read_json` for the errors)."""
        return read_json(self.config, "run config")

    def read_vocab(self) -> dict[str, Any]:
        """``vocab.json`` as a dict (see :func:`rnnlab.io.read_json` for the errors)."""
        return read_json(self.vocab, "vocabulary")

    # ---- creating ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: PathLike, force: bool = False, resume: bool = False) -> "RunDir":
        """Prepare ``path`` for training and return it **locked** (use it as a context manager,
        or call :meth:`unlock`).

        Steps: create the directory (and parents) if needed; prove it is writable; take the
        lock; then, if it already holds a run, continue it (``resume``), move it aside into
        ``replaced-<time>/`` (``force``), or refuse. Finally ensure ``checkpoints/`` exists.

        Parameters
        ----------
        path : path-like
            The run directory.
        force : bool, default False
            Start a new run where one exists; the old run's files are moved aside, not deleted.
        resume : bool, default False
            Continue the run already there; it must have a config, a vocabulary and a
            checkpoint.

        Raises
        ------
        RnnlabError
            If both flags are given, the path is not a usable directory, it is not writable,
            another rnnlab process uses it, it holds a run and neither flag is given, or
            ``resume`` is given but there is nothing (complete) to resume.
        """
        if force and resume:
            raise RnnlabError("--force and --resume exclude each other: --resume continues the "
                              "existing run, --force starts a new one in its place")
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RnnlabError(one_line(
                f"output path {run.path} exists and is not a directory; choose another path"))
        ensure_dir(run.path, "run directory")
        check_writable(run.path)
        run.lock()
        try:
            if run.has_run():
                if resume:
                    run._check_resumable()
                elif force:
                    run._move_aside()
                else:
                    raise RnnlabError(one_line(
                        f"run directory {run.path} already holds a run; pass --resume to "
                        f"continue it, or --force to start a new run there (the old run's files "
                        f"are moved to {run.path}/replaced-<time>/), or choose another directory"))
            elif resume:
                raise RnnlabError(one_line(
                    f"nothing to resume in {run.path}: it holds no run; start a new run "
                    f"without --resume"))
            ensure_dir(run.checkpoints_dir, "checkpoint directory")
            run._remove_stale_temporaries()
        except BaseException:
            run.unlock()
            raise
        return run

    def _check_resumable(self) -> None:
        try:
            self.check_complete()
        except RnnlabError as exc:
            raise RnnlabError(one_line(
                f"cannot resume: {exc}; or pass --force instead of --resume to start over "
                f"(the old files are moved aside)")) from None

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files that a killed writer (SIGKILL, power loss) left behind.

        :func:`rnnlab.io.atomic_write_bytes` names them ``.<file>.<random>.tmp`` next to their
        destination; only names of this run's own files are touched, and only while this
        process holds the lock, so no other rnnlab process can be writing them.
        """
        owned = {*_RUN_FILES, *(n + CHECKPOINT_SUFFIX for n in CHECKPOINT_NAMES)}
        for directory in (self.path, self.checkpoints_dir):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                base = name[1:-len(".tmp")].rpartition(".")[0]
                if base in owned or base == ".rnnlab-write-test"[1:]:
                    try:
                        os.unlink(os.path.join(directory, name))
                    except OSError:
                        pass

    def _move_aside(self) -> Path:
        """Move the current run's files into a new ``replaced-<time>/``; returns that path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            dest = self.path / (f"replaced-{stamp}" if n == 1 else f"replaced-{stamp}-{n}")
            try:
                os.mkdir(dest)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise write_error(exc, dest) from exc
        else:  # pragma: no cover - a thousand runs replaced within one second
            raise RnnlabError(one_line(f"cannot move the old run in {self.path} aside"))
        for name in (*_RUN_FILES, CHECKPOINTS):
            src = self.path / name
            if src.exists() or src.is_symlink():
                try:
                    os.replace(src, dest / name)
                except OSError as exc:
                    raise RnnlabError(one_line(
                        f"cannot move {src} aside to {dest}: {exc.strerror or exc}; nothing was "
                        f"deleted, move or delete the old run's files yourself")) from exc
        return dest

    # ---- locking -------------------------------------------------------------------------

    def lock(self) -> "RunDir":
        """Take the exclusive, non-blocking training lock on this run directory.

        Calling it again while holding the lock does nothing. The lock file keeps the holder's
        pid for messages; it is released by :meth:`unlock`, at the end of a ``with`` block, or
        by the operating system when the process ends.

        Returns
        -------
        RunDir
            ``self``, so that ``with RunDir(p).lock() as run:`` works.

        Raises
        ------
        RnnlabError
            If another process holds the lock (the message gives its pid), or the lock file
            cannot be created.
        """
        if self._lock_fd is not None or fcntl is None:
            return self
        path = self.lock_file
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise RnnlabError(one_line(f"run directory {self.path} does not exist")) from exc
            raise write_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                who = f"pid {holder}" if holder is not None else "pid unknown"
                raise RnnlabError(one_line(
                    f"run directory {self.path} is in use by another rnnlab process ({who}); "
                    f"wait for it to finish, stop it, or choose another directory")) from None
            raise RnnlabError(one_line(
                f"cannot lock run directory {self.path}: {exc.strerror or exc}")) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the pid is only informational; the lock itself is held
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        """Release the lock if held (the lock file itself stays; it is harmless)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock_fd is not None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unlock()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None
