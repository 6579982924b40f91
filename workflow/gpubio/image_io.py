"""Read TIFF / OME-TIFF images as (channels, y, x) arrays, whole or region by region.

Large images are never loaded whole by the tiled steps: ``TiffImage.region`` reads one
window, either with positioned reads (contiguous, uncompressed files) or through the
file's own chunks (tiled or compressed files). Label images are written the same way
(``LabelImage``): an uncompressed TIFF filled window by window.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from gpubio.errors import UnusableInput

log = logging.getLogger("gpubio")

# Fewer pixels than this per side hold no cell worth segmenting: a thumbnail, or an export
# that went wrong (a 1 x 1 px "image" reads fine and used to give 0 cells).
MIN_IMAGE_SIDE = 16


class ImageError(UnusableInput):
    """An image that cannot be read, or lacks what the settings ask of it (a channel); the
    message names the problem and the fix, and the step ends with it as one line."""


def _page_data_end(page) -> int:
    """The byte just past a page's last strip or tile (0 for a page without pixel data)."""
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    return max(ends, default=0)


class _TiffWarnings(logging.Handler):
    """Collects what tifffile logs while a header is read (instead of printing it)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def tiff_problem(path) -> str | None:
    """What is wrong with a TIFF file, from its headers alone; None when it looks whole.

    Reads the page headers of the first image and checks that they and the pixel data of
    its first and last page lie inside the file: a copy cut short is caught here, before
    any job runs, without reading pixels.
    """
    import tifffile

    tifffile_log = logging.getLogger("tifffile")
    collected, propagate = _TiffWarnings(), tifffile_log.propagate
    tifffile_log.addHandler(collected)
    tifffile_log.propagate = False
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            start = fh.read(4)
        if start[:2] not in (b"II", b"MM"):
            shown = start.decode("ascii", "replace") if start else "nothing"
            return f"not a TIFF file (it starts with {shown!r}); give a TIFF or OME-TIFF image"
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0] if tif.series else None
            axes = series.axes.upper() if series else ""
            sizes = dict(zip(axes, series.shape)) if series else {}
            pages = [p for p in (series.pages[0], series.pages[-1]) if p is not None] if series else []
            needed = max((_page_data_end(p) for p in pages), default=0)
        error = None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc}); check the file and its permissions"
    except Exception as exc:  # noqa: BLE001  (tifffile raises many kinds on a damaged file)
        error, needed = exc, 0
    finally:
        tifffile_log.removeHandler(collected)
        tifffile_log.propagate = propagate
    beyond = [int(m) for text in collected.messages for m in re.findall(r"invalid page offset (\d+)", text)]
    if needed > size or any(offset >= size for offset in beyond):
        return (
            f"the file is cut short: it has {size} bytes, but its pixel data or page headers lie beyond; "
            "copy the file again (an interrupted transfer?)"
        )
    if error is not None:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"cannot be read as TIFF ({reason}); export the image again as TIFF or OME-TIFF"
    if series is None:
        return "has no image in it; export the image again as TIFF or OME-TIFF"
    if "Y" not in axes or "X" not in axes:
        return f"has no Y and X axes (axes {series.axes!r}); give a 2D image, with optional channels, Z or T"
    if min(sizes["Y"], sizes["X"]) < MIN_IMAGE_SIDE:
        return (
            f"is only {sizes['Y']} x {sizes['X']} px, too small to hold a cell (at least {MIN_IMAGE_SIDE} px a side); "
            "export the whole image again (a thumbnail or a failed export?)"
        )
    return None


def check_image(path) -> None:
    """Raise ImageError (one line: file, problem, fix) when `path` is not a readable TIFF."""
    problem = tiff_problem(path)
    if problem:
        raise ImageError(f"{path}: {problem}")


def read_image(path: str) -> tuple[np.ndarray, str]:
    """Return (array shaped C x Y x X, the file's own axes string).

    Z and T stacks are reduced by maximum projection so downstream 2D steps see one plane
    per channel; RGB samples ('S') count as channels.
    """
    import tifffile

    check_image(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        data = series.asarray()
    axes = axes.replace("S", "C")
    for axis in "TZ":
        if axis in axes:
            i = axes.index(axis)
            data, axes = data.max(axis=i), axes[:i] + axes[i + 1 :]
    if "Q" in axes and "C" not in axes:  # an axis tifffile could not name: take it as channels
        axes = axes.replace("Q", "C", 1)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: cannot find Y and X axes in {series.axes!r}")
    if "C" not in axes:
        data, axes = data[np.newaxis], "C" + axes
    order = [axes.index(a) for a in "CYX"]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2D image with optional channels, found axes {series.axes!r}")
    return np.transpose(data, order), series.axes


def _planar_axes(axes: str) -> str | None:
    """The file axes as C/Y/X letters when the file is one 2D plane per channel, else None."""
    axes = axes.upper().replace("S", "C")
    if "Q" in axes and "C" not in axes:
        axes = axes.replace("Q", "C", 1)
    if set(axes) <= set("CYX") and len(set(axes)) == len(axes) and {"Y", "X"} <= set(axes):
        return axes
    return None


class TiffImage:
    """A TIFF / OME-TIFF image read window by window, as (C, Y, X).

    Z/T stacks (maximum projection needed) are read whole, with a log line saying so.
    """

    def __init__(self, path: str):
        import tifffile

        self.path = str(path)
        check_image(self.path)
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            file_axes = series.axes
            axes = _planar_axes(file_axes)
            self.dtype = np.dtype(series.dtype)
            shape = dict(zip(axes or "", series.shape))
            offset = series.dataoffset
            byteorder = tif.byteorder
        self.file_axes = file_axes
        self._array = None
        self._zarr = None
        self._offset = None
        if axes is None:
            log.info("%s: axes %s need a projection; reading the whole image", self.path, file_axes)
            self._array, _ = read_image(self.path)
            self.shape = tuple(self._array.shape)
            return
        self._axes = axes
        self.shape = (shape.get("C", 1), shape["Y"], shape["X"])
        if offset is not None and (axes.endswith("X") or axes.endswith("XC")):
            # contiguous, uncompressed: read rows at known offsets
            self._offset = offset
            self._file_shape = tuple(shape[a] for a in axes)
            self.dtype = self.dtype.newbyteorder(byteorder)
        else:
            import zarr

            self._store = tifffile.imread(self.path, aszarr=True, level=0)
            self._zarr = zarr.open(self._store, mode="r")

    @property
    def channels(self) -> int:
        return self.shape[0]

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of every channel, shaped (C, y1 - y0, x1 - x0)."""
        if self._array is not None:
            return np.ascontiguousarray(self._array[:, y0:y1, x0:x1])
        if self._zarr is not None:
            index = tuple({"Y": slice(y0, y1), "X": slice(x0, x1), "C": slice(None)}[a] for a in self._axes)
            block = np.asarray(self._zarr[index])
        else:
            block = self._read_contiguous(y0, y1, x0, x1)
        axes = self._axes
        if "C" not in axes:
            block, axes = block[np.newaxis], "C" + axes
        block = np.transpose(block, [axes.index(a) for a in "CYX"])
        return np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("="))

    def _read_contiguous(self, y0, y1, x0, x1) -> np.ndarray:
        """Positioned reads of the rows of one window; memory stays the size of the window."""
        axes, shape, item = self._axes, self._file_shape, self.dtype.itemsize
        strides = dict(zip(axes, np.cumprod((shape[1:] + (1,))[::-1])[::-1] * item))
        sizes = {"Y": y1 - y0, "X": x1 - x0, "C": self.shape[0]}
        starts = {"Y": y0, "X": x0, "C": 0}
        out = np.empty([sizes[a] for a in axes], dtype=self.dtype)
        # one read per run along X (with interleaved channels: X and C together)
        inner = 2 if axes.endswith("XC") else 1
        outer = axes[:-inner]
        run = int(np.prod([sizes[a] for a in axes[-inner:]])) * item
        with open(self.path, "rb") as fh:
            for idx in np.ndindex(*[sizes[a] for a in outer]):
                pos = self._offset + x0 * strides["X"]
                pos += sum((starts[a] + i) * strides[a] for a, i in zip(outer, idx))
                run_values = np.frombuffer(os.pread(fh.fileno(), run, int(pos)), dtype=self.dtype)
                out[idx] = run_values.reshape(out.shape[len(outer) :])
        return out

    def strided(self, step: int) -> np.ndarray:
        """The whole image at every `step`-th pixel, read in windows (memory: the result plus one window)."""
        _, height, width = self.shape
        window = max(step, (1024 // step) * step)  # a multiple of step keeps the sampling grid
        rows = []
        for y0 in range(0, height, window):
            y1 = min(height, y0 + window)
            parts = [
                self.region(y0, y1, x0, min(width, x0 + window))[:, ::step, ::step] for x0 in range(0, width, window)
            ]
            rows.append(np.concatenate(parts, axis=2))
        return np.concatenate(rows, axis=1)


class LabelImage:
    """A uint32 label image written as an uncompressed TIFF, one window at a time.

    The file is created at full size up front; windows are read and written with
    positioned I/O, so memory stays the size of one window whatever the image size.
    """

    dtype = np.dtype("<u4")

    def __init__(self, path, shape: tuple[int, int]):
        import tifffile

        self.path = str(path)
        self.shape = (int(shape[0]), int(shape[1]))
        mm = tifffile.memmap(self.path, shape=self.shape, dtype=self.dtype, photometric="minisblack")
        self._offset = int(mm.offset)
        del mm

    def _rows(self, y0, y1, x0, x1):
        row = self.shape[1] * self.dtype.itemsize
        for y in range(y0, y1):
            yield y - y0, self._offset + y * row + x0 * self.dtype.itemsize

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0), dtype=self.dtype)
        with open(self.path, "rb") as fh:
            for i, pos in self._rows(y0, y1, x0, x1):
                out[i] = np.frombuffer(os.pread(fh.fileno(), (x1 - x0) * self.dtype.itemsize, pos), self.dtype)
        return out

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        y1, x1 = y0 + block.shape[0], x0 + block.shape[1]
        with open(self.path, "r+b") as fh:
            for i, pos in self._rows(y0, y1, x0, x1):
                os.pwrite(fh.fileno(), block[i].tobytes(), pos)


def write_image(path, image: np.ndarray, axes: str = "CYX") -> None:
    """Write an array as TIFF with its axes recorded (atomically)."""
    import tifffile

    from gpubio.atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, metadata={"axes": axes}, photometric="minisblack")
