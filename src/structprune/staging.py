"""Temporaries, backups and locks: every one inside a hidden staging folder that only structprune writes.

A writer never puts a temporary beside its destination. It writes `<folder>/.structprune-tmp/<name>.tmp-<pid>-*`
and renames it into `<folder>/<name>`; a replaced checkpoint waits as `<folder>/.structprune-tmp/<name>.old-<pid>`
until the new one and its record are in place. The staging folder carries a marker file, and cleanup looks
nowhere else: a user's `notes.tmp-4242/` or `ck.old-4242` beside the output is never touched, whatever its name.

Writers of one destination serialise on its lock (an exclusive `flock` on a file named by the destination's
absolute path, in the cache folder's `locks/`), and readers of a checkpoint hold it shared, so a reader never
sees half of one version and half of another. The staging folder is removed once nothing is left in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .paths import cache_dir

STAGING = ".structprune-tmp"
MARKER = "STRUCTPRUNE"
MARKER_TEXT = ("Temporaries, backups and locks of structprune's writers in the folder above. Entries of processes\n"
               "that no longer run are removed by the next structprune run; the folder can be deleted when none runs.\n")
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def staging_dir(folder: str | Path) -> Path:
    """`folder`/.structprune-tmp, made (with its marker) when missing."""
    staging = Path(folder) / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    marker = staging / MARKER
    if not marker.is_file():
        marker.write_text(MARKER_TEXT)
    return staging


def is_staging(staging: Path) -> bool:
    """A staging folder of ours: the name and the marker written by `staging_dir`."""
    return staging.name == STAGING and staging.is_dir() and (staging / MARKER).is_file()


def temporary_prefix(name: str) -> str:
    """Prefix of a writer's temporary for `name`: it carries the writer's process id, so that `remove_orphans`
    can tell a temporary of a killed run from one being written right now (make -j)."""
    return f"{name}{TMP_MARK}{os.getpid()}-"


def _in_staging(make, folder: Path):
    """`make(staging)`, again if another process's `tidy` removed the staging folder in between."""
    for attempt in range(5):
        try:
            return make(staging_dir(folder))
        except FileNotFoundError:
            if attempt == 4:
                raise


def temporary_file(path: Path, suffix: str = "") -> Path:
    """A new empty temporary file for `path`, in its folder's staging folder, with the user's umask."""
    fd, tmp = _in_staging(lambda staging: tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=suffix,
                                                           dir=staging), path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: the mode open() would give
    os.close(fd)
    return Path(tmp)


def temporary_dir(path: Path) -> Path:
    """A new temporary folder for `path`, in its folder's staging folder, with the user's umask."""
    tmp = Path(_in_staging(lambda staging: tempfile.mkdtemp(prefix=temporary_prefix(path.name), dir=staging),
                           path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def tidy(folder: str | Path) -> None:
    """Remove `folder`'s staging folder when only its marker is left (another writer's entry keeps it)."""
    staging = Path(folder) / STAGING
    if not is_staging(staging) or [p.name for p in staging.iterdir()] != [MARKER]:
        return
    (staging / MARKER).unlink(missing_ok=True)
    try:
        staging.rmdir()
    except OSError:  # a writer put something there meanwhile: the folder stays ours
        staging_dir(folder)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(entry: Path, mark: str) -> int | None:
    try:
        return int(entry.name.rsplit(mark, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers left in `folder`'s staging folder (and nowhere else)."""
    staging = Path(folder) / STAGING
    if not is_staging(staging):
        return []
    removed = []
    for entry in staging.glob(f"*{TMP_MARK}*"):
        pid = _owner(entry, TMP_MARK)
        if pid is None or pid == os.getpid() or running(pid):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def backup_path(path: Path) -> Path:
    """Where this process keeps the checkpoint it is replacing at `path` until the replacement is complete."""
    return staging_dir(path.parent) / f"{path.name}{OLD_MARK}{os.getpid()}"


def stranded_backups(path: Path) -> list[Path]:
    """Backups of `path` whose writer no longer runs (an overwrite killed half-way), oldest first."""
    staging = path.parent / STAGING
    if not is_staging(staging):
        return []
    found = []
    for entry in staging.glob(f"{path.name}{OLD_MARK}*"):
        pid = _owner(entry, OLD_MARK)
        if pid is not None and entry.name == f"{path.name}{OLD_MARK}{pid}" and pid != os.getpid() \
                and not running(pid):
            found.append(entry)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def remove_tree(path: Path) -> None:
    _remove(path)


def lock_file(path: Path) -> Path:
    """The lock of destination `path`: named by its absolute path, in the cache folder (never beside it)."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "locks" / f"{key}.lock"


@contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold `path`'s lock: exclusive for a writer, shared for a reader. A reader that cannot make the lock file
    (a read-only cache) reads unlocked."""
    lock = lock_file(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
    except OSError:
        if not shared:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _nearest_existing(path: Path) -> Path:
    parent = Path(path).parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_file_output(path: Path, overwrite: bool, option: str = "--output") -> None:
    """Refuse, before any work, a file destination that cannot be written: a folder, an existing file without
    --overwrite, a folder above it that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder: name a file (for example {path / 'model.gguf'})")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists: choose another {option}, or pass --overwrite to replace it")
    parent = _nearest_existing(path)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {parent} is not a writable folder; choose another {option}")


def check_free_space(path: Path, need: int, option: str = "--output") -> None:
    """Refuse a destination whose file system has less than `need` bytes free."""
    import errno

    parent = _nearest_existing(Path(path))
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{parent} has {free / 2**20:,.1f} MiB free, and {path} needs up to "
                      f"{need / 2**20:,.1f} MiB: free space or choose another {option}")
