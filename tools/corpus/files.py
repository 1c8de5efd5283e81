"""Files to page images: finding files, naming them, and rendering each page.

PDFs render with PDFium (pypdfium2); images load with Pillow (every frame of a multi-frame TIFF is a page);
office files become PDFs through LibreOffice first. Every way a file can be unusable ends in BadInputError
with the reason, so the caller can skip that file and go on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from pagelens.errors import BadInputError
from pagelens.tools.corpus.office import OFFICE_SUFFIXES, convert_to_pdf

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}
PDF_SUFFIXES = {".pdf"}


@dataclass(frozen=True)
class SourceFile:
    """A file to index: where it is, and its name in the store (the path relative to the folder given)."""

    path: Path
    name: str

    @property
    def kind(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in PDF_SUFFIXES:
            return "pdf"
        if suffix in IMAGE_SUFFIXES:
            return "image"
        if suffix in OFFICE_SUFFIXES:
            return suffix.lstrip(".")
        return "unknown"


@dataclass
class RenderedPage:
    page_number: int
    image: Image.Image
    pdf_page: object | None
    """The open pypdfium2 page (for its text layer), or None for an image file."""
    scale: float


def discover(paths: list[Path], *, exclude: Path | None = None) -> tuple[list[SourceFile], list[tuple[Path, str]]]:
    """Files under the given paths (folders recursively, hidden entries and the folder `exclude` skipped), and
    the paths that cannot be indexed with the reason: missing, a dangling or looping symlink, not a regular file
    (a FIFO, a socket, a device), an unreadable folder. Symlinked folders are followed unless they loop."""
    found: list[SourceFile] = []
    problems: list[tuple[Path, str]] = []
    skip = exclude.resolve() if exclude is not None else None
    for given in paths:
        reason = _unusable(given)
        if reason is not None:
            problems.append((given, reason))
        elif given.is_dir():
            root = given.resolve()
            if root != skip:
                _walk(root, "", skip, frozenset(), found, problems)
        else:
            found.append(SourceFile(given.resolve(), given.name))
    return found, problems


def _unusable(path: Path) -> str | None:
    """Why `path` cannot be indexed or walked, or None for a regular file or a folder (links followed)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a dangling symlink (its target {os.readlink(path)} does not exist)"
        return "no such file or folder"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link resolves to itself)"
        return f"cannot read it ({exc.strerror})"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
    return f"not a regular file ({kind})"


def _walk(folder: Path, name: str, skip: Path | None, ancestors: frozenset[tuple[int, int]],
          found: list[SourceFile], problems: list[tuple[Path, str]]) -> None:
    """Add the files under `folder`, named from `name` (its path relative to the folder given, '' for that one);
    `ancestors` are the (device, inode) of the folders above, so a symlink back to one of them is a loop."""
    info = folder.stat()
    ancestors = ancestors | {(info.st_dev, info.st_ino)}
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        problems.append((folder, f"cannot read the folder ({exc.strerror})"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        reason = _unusable(path)
        if reason is not None:
            problems.append((path, reason))
        elif path.is_dir():
            target = path.resolve()
            if target == skip:
                continue  # the store itself: indexing its own page images would grow it on every run
            target_info = target.stat()
            if (target_info.st_dev, target_info.st_ino) in ancestors:
                problems.append((path, f"a symlink loop (it leads back to {target})"))
            else:
                _walk(path, f"{name}{entry.name}/", skip, ancestors, found, problems)
        else:
            found.append(SourceFile(path, f"{name}{entry.name}"))


def printable(text: str) -> str:
    """`text` on one line: control and other unprintable characters (a newline in a file name) as escapes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 of the file's bytes (the document's identity) and its size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_pixels(width: int, height: int, what: str) -> None:
    cap = Image.MAX_IMAGE_PIXELS
    if cap and width * height > cap:
        raise BadInputError(
            f"{what} is {width}x{height} pixels, over the cap of {cap:,} pixels; use a lower --dpi or a smaller image."
        )


@contextmanager
def _strict_pixel_cap() -> Iterator[None]:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice it; a page store must not take such files silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _check_page_count(count: int, max_pages: int) -> None:
    if count > max_pages:
        raise BadInputError(
            f"it has {count:,} pages, over the cap of {max_pages:,} pages a file; raise the cap with --max-pages N "
            f"(or max_pages in pagelens.toml), or split the file."
        )


def render_pages(source: SourceFile, dpi: int, password: str | None, max_pages: int) -> Iterator[RenderedPage]:
    """Each page of the file as an RGB image (PDF pages at `dpi`); raises BadInputError for an unusable file,
    or one of more than `max_pages` pages, before rendering any."""
    if source.kind == "unknown":
        raise BadInputError(
            f"unknown file type {source.path.suffix or '(no suffix)'!r}; pagelens reads PDF, images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) and office files via LibreOffice."
        )
    if source.path.stat().st_size == 0:
        raise BadInputError("the file is empty (0 bytes)")
    if source.kind == "pdf":
        yield from _render_pdf(source.path, dpi, password, max_pages)
    elif source.kind == "image":
        yield from _load_image_frames(source.path, max_pages)
    else:
        with tempfile.TemporaryDirectory(prefix="pagelens-office-") as tmp:
            yield from _render_pdf(convert_to_pdf(source.path, Path(tmp)), dpi, password, max_pages)


def _render_pdf(path: Path, dpi: int, password: str | None, max_pages: int) -> Iterator[RenderedPage]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as exc:
        text = str(exc).lower()
        if "password" in text:
            if password:
                raise BadInputError("the password given with --password does not open this PDF") from None
            raise BadInputError("the PDF is password-protected; give its password with --password") from None
        raise BadInputError(f"PDFium cannot open it as a PDF ({exc})") from None
    try:
        _check_page_count(len(pdf), max_pages)
        scale = dpi / 72
        for index in range(len(pdf)):
            page = pdf[index]
            width, height = page.get_size()
            check_pixels(round(width * scale), round(height * scale), f"page {index + 1} at {dpi} dpi")
            bitmap = page.render(scale=scale, may_draw_forms=True)
            image = bitmap.to_pil().convert("RGB")
            yield RenderedPage(index + 1, image, page, scale)
    finally:
        pdf.close()


def _load_image_frames(path: Path, max_pages: int) -> Iterator[RenderedPage]:
    try:
        with _strict_pixel_cap(), Image.open(path) as image:
            _check_page_count(getattr(image, "n_frames", 1), max_pages)
            for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
                # Pillow checks only the first frame on open; each TIFF frame has its own size, read before decoding.
                check_pixels(frame.width, frame.height, f"frame {number} of the image" if number > 1 else "the image")
                yield RenderedPage(number, ImageOps.exif_transpose(frame).convert("RGB"), None, 1.0)
    except Image.DecompressionBombWarning as exc:
        raise BadInputError(f"the image is over Pillow's pixel cap ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise BadInputError(f"the image is over Pillow's pixel cap ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInputError(f"Pillow cannot read it as an image ({exc})") from None
