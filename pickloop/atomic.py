"""Folders that land whole: written beside their final name, then renamed into place.

    with replacing_folder(final) as tmp:
        ...  # write every file into tmp
    # now tmp is `final`: a kill at any moment left the previous `final` or the new one, never half of one

While it is written the folder is ``.tmp-<name>-<pid>``; for the instant of the swap the previous
folder is ``.tmp-<name>-<pid>-old``. :func:`remove_stale_temporaries` cleans up after writers that
were killed (each new write runs it first, and ``finetune run`` before anything else), so nothing
half-written stays behind, and no reader is ever pointed at it.
"""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(rf"^{re.escape(TMP_PREFIX)}(.+)-(\d+)(-old)?$")


def fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder
    finally:
        os.close(fd)


@contextmanager
def replacing_folder(final: Path | str) -> Iterator[Path]:
    """An empty temporary folder beside ``final`` that replaces ``final`` when the block ends without
    an exception (an exception removes it and leaves ``final`` as it was). The caller fsyncs its files."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Clean up after killed writers of :func:`replacing_folder` in ``folder``: a ``.tmp-<name>-<pid>``
    whose process is gone is removed, and a ``.tmp-<name>-<pid>-old`` (the previous ``<name>``, moved aside
    just before the kill) goes back to ``<name>`` when nothing took its place. A live writer's folders are
    left alone. Returns the paths removed or moved back."""
    done = []
    folder = Path(folder)
    if not folder.is_dir():
        return done
    for p in sorted(folder.glob(f"{TMP_PREFIX}*")):
        m = _TMP_NAME.match(p.name)
        if m is not None and int(m.group(2)) != os.getpid() and _pid_alive(int(m.group(2))):
            continue
        if m is not None and m.group(3) and not (folder / m.group(1)).exists():
            os.replace(p, folder / m.group(1))
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(p)
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
