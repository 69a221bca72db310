"""Find the image files under a folder, in a stable order, and say why any were left out."""

from __future__ import annotations

import errno
import hashlib
import heapq
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stream_cluster.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "ScanResult", "file_signatures", "files_digest", "scan"]

logger = logging.getLogger(__name__)

#: File name suffixes (compared lower-case) that scan treats as images.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
_NOT_REGULAR = "not a regular file (FIFO, device or socket)"


@dataclass(frozen=True)
class ScanResult:
    """What ``scan`` found.

    Attributes
    ----------
    root : Path
        The scanned folder, absolute (symlinks in it not resolved).
    files : list[str]
        Image paths relative to ``root``, '/'-separated, sorted by their bytes (the order of
        ``LC_ALL=C ls``), so the order is the same on every run and machine. Names that are
        not valid UTF-8 appear as surrogate-escaped str (``os.fsdecode``).
    skipped : list[tuple[str, str]]
        ``(relative path, reason)`` for every image, symlink or folder that was left out,
        sorted the same way.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _sort_key(rel: str) -> bytes:
    return os.fsencode(rel)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


class _Walker:
    """Iterative walk; holds the state shared by plain folders and followed symlinks."""

    def __init__(self, root: str, root_real: str, follow_external: bool) -> None:
        self.root = root
        self.root_real = root_real
        self.follow_external = follow_external
        self.files: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        # Real path of every folder listed so far -> the relative path it was listed under,
        # and -> the real path of the folder it was reached from (None for root).
        self.visited: dict[str, str] = {root_real: ""}
        self.parent: dict[str, str | None] = {root_real: None}
        # Folder symlinks waiting to be followed, smallest relative path first.
        self.pending: list[tuple[bytes, str, str, str, str]] = []

    def _is_ancestor(self, real: str, folder_real: str) -> bool:
        """Whether ``real`` is ``folder_real`` or a folder the walk passed through to get there."""
        if real == folder_real or _inside(folder_real, real):
            return True
        node = self.parent.get(folder_real)
        while node is not None:
            if node == real:
                return True
            node = self.parent.get(node)
        return False

    def walk(self, start: str, start_rel: str, start_real: str) -> None:
        stack = [(start, start_rel, start_real)]
        while stack:
            dpath, drel, dreal = stack.pop()
            try:
                with os.scandir(dpath) as it:
                    entries = list(it)
            except PermissionError:
                self.skipped.append((drel or ".", "permission denied: cannot list folder"))
                continue
            except OSError as exc:
                reason = f"cannot list folder: {exc.strerror or exc}"
                self.skipped.append((drel or ".", reason))
                continue
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                rel = f"{drel}/{name}" if drel else name
                try:
                    if entry.is_symlink():
                        self._symlink(entry.path, rel, name, dreal)
                    elif entry.is_dir(follow_symlinks=False):
                        real = os.path.join(dreal, name)
                        self.visited[real] = rel
                        self.parent[real] = dreal
                        stack.append((entry.path, rel, real))
                    elif _is_image_name(name):
                        if entry.is_file(follow_symlinks=False):
                            self._file(entry.path, rel)
                        else:
                            self.skipped.append((rel, _NOT_REGULAR))
                except OSError as exc:
                    self.skipped.append((rel, f"cannot inspect: {exc.strerror or exc}"))

    def _file(self, path: str, rel: str) -> None:
        if os.access(path, os.R_OK):
            self.files.append(rel)
        else:
            self.skipped.append((rel, "permission denied: cannot read file"))

    def _symlink(self, path: str, rel: str, name: str, parent_real: str) -> None:
        image_name = _is_image_name(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if image_name or not os.path.splitext(name)[1]:
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                self.skipped.append((rel, f"broken symlink: target '{target}' does not exist"))
            return
        except PermissionError:
            self.skipped.append((rel, "permission denied: cannot follow symlink"))
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.skipped.append((rel, "symlink loop: too many levels of symbolic links"))
            else:
                self.skipped.append((rel, f"cannot follow symlink: {exc.strerror or exc}"))
            return
        real = os.path.realpath(path)
        inside = _inside(real, self.root_real)
        if stat.S_ISDIR(st.st_mode):
            if not inside and not self.follow_external:
                self.skipped.append(
                    (rel, f"symlink outside root not followed: folder -> {real}")
                )
            elif self._is_ancestor(real, parent_real):
                self.skipped.append(
                    (rel, f"symlink loop: points to its own ancestor folder {real}")
                )
            else:
                heapq.heappush(self.pending, (_sort_key(rel), rel, path, real, parent_real))
        elif image_name:
            if not stat.S_ISREG(st.st_mode):
                self.skipped.append((rel, _NOT_REGULAR))
            elif not inside and not self.follow_external:
                self.skipped.append((rel, f"symlink outside root not followed: -> {real}"))
            else:
                self._file(path, rel)

    def follow_pending(self) -> None:
        """Follow folder symlinks after all plain folders, smallest relative path first.

        Real folders thus keep their own names, and a folder reached twice (two symlinks to
        it, or a symlink to a folder already listed) is listed once: the walk is finite even
        for symlink graphs that would otherwise grow exponentially.
        """
        while self.pending:
            _, rel, path, real, parent_real = heapq.heappop(self.pending)
            if real in self.visited:
                first = self.visited[real] or "."
                self.skipped.append((rel, f"symlink to a folder already scanned as '{first}'"))
                continue
            self.visited[real] = rel
            self.parent[real] = parent_real
            self.walk(path, rel, real)


def scan(
    root: str | os.PathLike[str], *, follow_external_symlinks: bool = False
) -> ScanResult:
    """List the image files under ``root``, recursively, in a stable sorted order.

    A file is an image when its suffix is in ``IMAGE_SUFFIXES`` (any case); other files are
    ignored silently. **Hidden files and hidden folders (name starting with '.') are ignored**,
    like ``ls`` does; this also drops macOS ``._*`` resource forks and ``.thumbnails`` caches.
    Symlinks inside ``root`` are followed; a folder reached twice is listed once (its real path
    is remembered), so symlink loops end. Left out, with a reason in ``skipped``: broken
    symlinks, symlink loops, symlinks pointing outside ``root`` (unless
    ``follow_external_symlinks``), folders that cannot be listed and files that cannot be read,
    and FIFOs or devices named like images (reading one would block).

    Parameters
    ----------
    root : str or os.PathLike
        Folder to scan.
    follow_external_symlinks : bool, default=False
        Also follow symlinks whose target lies outside ``root``.

    Returns
    -------
    ScanResult
        Relative paths of the images and of what was skipped, both sorted by bytes.

    Raises
    ------
    InputError
        ``root`` does not exist, is not a folder, or cannot be listed.

    Notes
    -----
    Iterative (no recursion limit), one ``os.scandir`` per folder; memory is a few hundred
    bytes per file found. Content is not checked here: ``decode.decode_image`` does that.
    """
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.exists(root_str):
        raise InputError(
            f"Input folder '{root_str}' does not exist. Check the path for typos, or mount "
            "the drive that holds it."
        )
    if not os.path.isdir(root_str):
        raise InputError(
            f"Input '{root_str}' is a file, not a folder. Give the folder that contains the "
            "images."
        )
    try:
        with os.scandir(root_str):
            pass
    except OSError as exc:
        raise InputError(
            f"Input folder '{root_str}' cannot be listed: {exc.strerror or exc}. Check its "
            "permissions."
        ) from None
    root_real = os.path.realpath(root_str)
    walker = _Walker(root_str, root_real, follow_external_symlinks)
    walker.walk(root_str, "", root_real)
    walker.follow_pending()
    files = sorted(walker.files, key=_sort_key)
    skipped = sorted(walker.skipped, key=lambda item: (_sort_key(item[0]), item[1]))
    logger.info("scanned %s: %d images, %d skipped", root_str, len(files), len(skipped))
    return ScanResult(Path(root_str), files, skipped)


def files_digest(files: Sequence[str], root: str | os.PathLike[str]) -> str:
    """Return a SHA-256 hex digest of each file's relative path, size and mtime (ns).

    Used to tell whether the input folder changed between two runs without reading any
    pixels: adding, removing, renaming, rewriting or touching a file changes the digest. A file
    that has vanished is hashed as missing rather than raising.

    Parameters
    ----------
    files : sequence of str
        Relative paths, as in ``ScanResult.files`` (order matters).
    root : str or os.PathLike
        Folder the paths are relative to.

    Returns
    -------
    str
        64 hex characters.
    """
    digest = hashlib.sha256()
    base = os.fspath(root)
    for rel in files:
        try:
            st = os.stat(os.path.join(base, rel))
            meta = f"{st.st_size} {st.st_mtime_ns}"
        except OSError as exc:
            meta = f"missing {exc.errno}"
        digest.update(os.fsencode(rel) + b"\0" + meta.encode("ascii") + b"\n")
    return digest.hexdigest()


def file_signatures(root: str | os.PathLike[str], files: Sequence[str]) -> list[str]:
    """``size mtime_ns`` of each file (what tells a changed file from an unchanged one)."""
    out = []
    for rel in files:
        try:
            st = os.stat(os.path.join(root, rel))
            out.append(f"{st.st_size} {st.st_mtime_ns}")
        except OSError as exc:
            out.append(f"missing {exc.errno}")
    return out
