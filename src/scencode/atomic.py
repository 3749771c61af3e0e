"""Atomic outputs: write under a temporary name in the target's folder, then rename.

A killed job therefore never leaves a file (or a shard folder) that looks complete. Temporary names
carry the writer's process id, so a rerun removes what a killed (SIGKILL) writer left behind without
touching a writer that is still running. A signal that arrived while Python was ignoring exceptions
(a finaliser, a weakref callback) still stops the step: nothing is committed after it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from .errors import ScencodeError


@dataclass(frozen=True)
class Output:
    """Marks a step parameter as an output, so the CLI checks that it can be written before any
    work starts (not after an hour of computation)."""

    folder: bool = False


OutputFile = Annotated[Path, Output()]
OutputFolder = Annotated[Path, Output(folder=True)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


TERMINATED_EXIT = 143  # 128 + SIGTERM: what SLURM and Snakemake expect of a job stopped by a signal


class Terminated(BaseException):
    """SIGTERM/SIGINT (SLURM's scancel, a time limit, Ctrl-C) raised as an exception, so that every
    step unwinds through its atomic writers and leaves no temporary file behind. A BaseException, so
    that no ``except Exception`` on the way swallows it."""


_stop_signal: str | None = None


def raise_terminated(signum, frame) -> None:
    """Signal handler: remember the signal (Python drops exceptions raised inside finalisers, so the
    raise alone may be lost) and raise :class:`Terminated`."""
    global _stop_signal
    _stop_signal = signal.Signals(signum).name
    raise Terminated(_stop_signal)


def stop_signal() -> str | None:
    """The signal that asked this process to stop, if any."""
    return _stop_signal


@contextlib.contextmanager
def deferred_stop() -> Iterator[Callable[[], str | None]]:
    """Within the block a stop signal (SIGTERM, SIGINT, SIGUSR1: SLURM's preemption warning) is only
    recorded; the block asks ``requested()`` at a point where stopping is safe (the trainer: after
    an optimiser step, having written last.pt) and raises :class:`Terminated` itself, which the CLI
    maps to exit 143 as for any other step. The handlers before are restored after the block."""
    requested: list[str] = []

    def record(signum, frame) -> None:
        requested.append(signal.Signals(signum).name)

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield lambda: None
        return
    before = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, record)
    try:
        yield lambda: requested[0] if requested else None
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _refuse_if_stopping() -> None:
    if _stop_signal is not None:
        raise Terminated(_stop_signal)


# the host is in the name too: on a shared filesystem, another node's writer is never taken for dead
HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{HOST}-{os.getpid()}."


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Temporaries of ``target`` left by a writer of this host that no longer exists (SIGKILL, OOM)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{HOST}-(\d+)\..*\.tmp(\.[^/]*)?")
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier writer of this process that did not finish (it would have cleaned up)
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def check_writable(target: str | Path, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a path that is a folder (for a
    file), a file (for a folder), a parent that is a file, or a parent where nothing can be created."""
    target = followed(target)
    if not folder and target.is_dir():
        raise ScencodeError("output path is a folder, not a file", target)
    if folder and target.exists() and not target.is_dir():
        raise ScencodeError("output path is a file, not a folder", target)
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ScencodeError(f"cannot create the output: {ancestor} is a file, not a folder", target)
    try:  # os.access says yes to root even for an immutable folder: try it
        fd, probe = tempfile.mkstemp(prefix=".scencode-probe.", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ScencodeError(f"cannot write in {ancestor} ({exc.strerror})", target) from None


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ScencodeError("cannot create the output: a parent of it is a file", target) from None
    except OSError as exc:
        raise ScencodeError(f"cannot create the output's folder ({exc.strerror})", target) from None


@contextlib.contextmanager
def _creating(target: Path) -> Iterator[None]:
    """The temporary beside ``target`` is the write test: its failure is named (the CLI checked
    the same with :func:`check_writable` before any work; a library caller learns it here)."""
    try:
        yield
    except OSError as exc:
        raise ScencodeError(f"cannot write in {target.parent} ({exc.strerror})", target) from None


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success (a symlinked
    ``target`` is followed: the link stays, the file it points to is replaced)."""
    target = followed(target)
    if target.is_dir():
        raise ScencodeError("output path is a folder, not a file", target)
    _make_parent(target)
    remove_stale_temporaries(target)
    with _creating(target):
        fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        _refuse_if_stopping()
        os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


OWNED = ".scencode-output.json"  # in every folder scencode replaces: what it wrote there


def followed(target: str | Path) -> Path:
    """The path a write goes to: a symlinked output is followed (the link stays where the user put
    it and the output goes where it points), a path that begins with ``-`` is refused (a shell or a
    tool would read it as an option)."""
    target = Path(target)
    if str(target).startswith("-"):
        raise ScencodeError("a path may not begin with '-' (it reads as an option); write ./" + str(target), target)
    return target.resolve() if target.is_symlink() else target


def ownership(folder: Path, kind: str) -> dict:
    """What :func:`atomic_dir` records in a folder it wrote: its kind and every file, with size and
    sha256 (so that a later run replaces the folder only when nobody added anything to it)."""
    from .shards import file_sha256

    files = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != OWNED
    }
    return {"scencode_output": kind, "files": files}


def check_replaceable(folder: Path, kind: str) -> None:
    """Refuse, naming what was found, to replace a folder that is not scencode's own output of this
    kind: one whose record is missing, unreadable or of another kind, that holds anything the record
    does not list (a user's file, a folder, a link), or a listed file whose size or sha256 is not
    the recorded one (so a hand-written record claims nothing). An empty folder is free."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    record_path = folder / OWNED
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record["files"], dict):
            raise TypeError("'files' is not a mapping")
        listed = set(record["files"]) if record.get("scencode_output") == kind else None
    except FileNotFoundError:
        raise ScencodeError(
            f"output folder is not empty and was not written by scencode {kind} (no {OWNED}); refusing to "
            "replace it: choose a new or empty folder",
            folder,
        ) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ScencodeError(f"output folder's {OWNED} is unreadable ({exc}); refusing to replace it", folder) from None
    if listed is None:
        raise ScencodeError(
            f"output folder holds the output of scencode {record.get('scencode_output')!r}, not {kind!r}; "
            "refusing to replace it",
            folder,
        )
    # the sub-folders the listed files sit in are scencode's too
    folders = {str(parent) for name in listed for parent in Path(name).parents if str(parent) != "."}
    foreign = sorted(
        rel
        for rel, path in ((str(p.relative_to(folder)), p) for p in folder.rglob("*"))
        if path.name != OWNED and not _listed(path, rel, listed, folders)
    )
    if foreign:
        raise ScencodeError(
            f"output folder holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} scencode {kind} did not "
            f"write ({', '.join(foreign[:5])}{', …' if len(foreign) > 5 else ''}); refusing to replace it: "
            "move them out or choose another folder",
            folder,
        )
    changed = sorted(
        name for name in listed if (folder / name).is_file() and not _as_recorded(folder / name, record["files"][name])
    )
    if changed:
        raise ScencodeError(
            f"output folder holds {len(changed)} file(s) changed since scencode {kind} wrote them "
            f"({', '.join(changed[:5])}{', …' if len(changed) > 5 else ''}); refusing to replace it: "
            "remove the folder yourself if nothing in it is yours",
            folder,
        )


def _listed(path: Path, rel: str, listed: set[str], folders: set[str]) -> bool:
    if path.is_symlink():
        return False
    return (path.is_file() and rel in listed) or (path.is_dir() and rel in folders)


def _as_recorded(path: Path, entry) -> bool:
    from .shards import file_sha256

    try:
        return path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]
    except (TypeError, KeyError):
        return False


@contextlib.contextmanager
def atomic_dir(target: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` on success, with a record
    of the files written (:data:`OWNED`). An existing ``target`` is replaced only when it is
    scencode's own earlier output of this ``kind`` and nothing was added to it
    (:func:`check_replaceable`): refused before any work otherwise, never deleted. A symlinked
    ``target`` is followed."""
    target = followed(target)
    if target.exists() and not target.is_dir():
        raise ScencodeError("output path is a file, not a folder", target)
    check_replaceable(target, kind)
    _make_parent(target)
    remove_stale_temporaries(target)
    with _creating(target):
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
        _refuse_if_stopping()
        (tmp / OWNED).write_text(json.dumps(ownership(tmp, kind), indent=1, sort_keys=True) + "\n")
        if target.exists():
            check_replaceable(target, kind)  # again: a user may have added a file while this step ran
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
            os.replace(target, old / "old")  # moved aside first: the new folder appears in one rename
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(obj, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    # numpy scalars and arrays show up in reports
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
