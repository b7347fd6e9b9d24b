"""Which files the viewer may open: the files named on the command line and, with ``--root``, the image
files under that folder. Everything else is refused with a :class:`ServeError` that says why and what
to do: absolute paths and ``..`` outside the given files, symlinks that leave the root, folders,
missing files and names without an image suffix."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".vmu", ".svslide")
IMAGE_SUFFIXES = TILE_SUFFIXES + SLIDE_SUFFIXES


class ServeError(Exception):
    """A request the viewer refuses: ``status`` is the HTTP status, ``message`` is shown in the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ServedFile:
    """A file the viewer may open: ``name`` is what the page and the API call it."""

    name: str
    path: Path

    @property
    def kind(self) -> str:
        """``"tile"`` (PNG/JPEG, decoded whole) or ``"slide"`` (TIFF family, read by pyramid level)."""
        return "tile" if self.path.suffix.lower() in TILE_SUFFIXES else "slide"


def _check_suffix(path: Path, name: str) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ServeError(415, f"'{name}' is not an image the viewer opens (suffix {path.suffix or 'none'!r}). "
                              f"Supported: {', '.join(IMAGE_SUFFIXES)}.")


class FileRegistry:
    """The files the server may read.

    Args:
        paths: files given on the command line (each must exist and have an image suffix).
        root: a folder whose image files (recursively, symlinks that stay inside it) may be opened.
    """

    def __init__(self, paths: Iterable[str | Path] = (), root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ServeError(400, f"--root '{root}' is not a folder; pass a folder of images or slides.")
        self._given: dict[str, ServedFile] = {}
        for p in paths:
            path = Path(p).expanduser()
            if not path.is_file():
                raise ServeError(400, f"'{p}' is not a file; pass image or slide files (or a folder with --root).")
            _check_suffix(path, str(p))
            name = path.name
            k = 2
            while name in self._given:
                name, k = f"{path.stem}-{k}{path.suffix}", k + 1
            self._given[name] = ServedFile(name, path.resolve())

    @property
    def initial(self) -> str | None:
        """The name of the first file given on the command line (``pathsegmentor serve FILE`` opens it in the page
        at once), or None when only ``--root`` was given."""
        return next(iter(self._given), None)

    def list(self, limit: int = 2000) -> list[ServedFile]:
        """The given files, then the image files under the root (sorted, at most ``limit``)."""
        out = list(self._given.values())
        if self.root is not None:
            for p in sorted(self.root.rglob("*")):
                if len(out) >= limit:
                    break
                rel = p.relative_to(self.root).as_posix()
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and self._inside(p) and rel not in self._given:
                    out.append(ServedFile(rel, p.resolve()))
        return out

    def _inside(self, p: Path) -> bool:
        assert self.root is not None
        try:
            p.resolve().relative_to(self.root)
            return True
        except ValueError:
            return False

    def resolve(self, name: str) -> ServedFile:
        """The file the page calls ``name``, or a :class:`ServeError` saying why it is refused."""
        if not isinstance(name, str) or not name or "\0" in name:
            raise ServeError(400, "No file named: pass file=NAME as listed by /api/files.")
        if name in self._given:
            return self._given[name]
        if self.root is None:
            raise ServeError(404, f"'{name}' is not one of the files this server was started with "
                                  f"({', '.join(self._given) or 'none'}). Restart with it on the command line, "
                                  f"or with --root FOLDER.")
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            raise ServeError(403, f"'{name}' is outside the served folder: pass a path relative to --root "
                                  f"without '..'.")
        path = self.root.joinpath(*pure.parts)
        if not self._inside(path):
            raise ServeError(403, f"'{name}' leads outside the served folder (a symlink out of --root); "
                                  f"copy the file into the root instead.")
        if path.is_dir():
            raise ServeError(400, f"'{name}' is a folder; pick an image or slide file.")
        if not path.is_file():
            raise ServeError(404, f"'{name}' does not exist under the served folder.")
        _check_suffix(path, name)
        return ServedFile(pure.as_posix(), path.resolve())
