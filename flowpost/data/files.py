"""A user's own data: a folder of images, or an array file (.npy, .npz, .safetensors).

Folders: every ``.png`` / ``.jpg`` / ``.jpeg`` file (case-insensitive) is read with Pillow.
If the folder holds no images itself but has sub-folders that do, each sub-folder is one
class (sorted by name, labels 0, 1, ...). Images are grayscale (1 channel) when every file is
grayscale, else RGB (3 channels); they are resized to ``image_size`` when given, and must all
have the same size when not. Pixels are scaled from [0, 255] to [-1, 1].

Array files: ``.npy`` holds the samples; ``.npz`` and ``.safetensors`` hold them under the key
``"x"`` with optional integer labels under ``"labels"`` or ``"cond"`` (one per sample,
shape ``(n,)``), or float condition vectors under ``"cond"`` (shape ``(n, d)``: robot
observations, goals, prompt embeddings). Values are used as
they are (no rescaling): put them on a scale of about one yourself. Every failure raises a
``ValueError`` (``FileNotFoundError`` for a missing path) naming the file, and for NaN / Inf
the first bad sample index.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "points.npy")
    >>> np.save(path, np.random.randn(100, 2))
    >>> load_array_file(path).spec.shape
    (2,)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowpost.data.base import ArrayData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
LABEL_KEYS = ("labels", "cond")


def _check_samples(x: np.ndarray, path: Path, what: str = "samples") -> np.ndarray:
    """Validate an array of samples: numeric, at least 2-D, non-empty, finite."""
    if x.dtype.kind not in "fiub":
        raise ValueError(
            f"{path}: {what} have dtype {x.dtype}; expected a real numeric array (float or int)"
        )
    if x.ndim < 2:
        raise ValueError(
            f"{path}: {what} have shape {x.shape}; expected (n, ...) with one sample per row "
            "(for 1-D data save x.reshape(-1, 1))"
        )
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{path}: the file holds no samples (shape {x.shape}); it is empty")
    x = x.astype(np.float32)
    finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{path}: sample {int(bad[0])} contains NaN or Inf ({len(bad)} bad samples in all); "
            "clean or drop them"
        )
    return x


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{path}: labels have shape {labels.shape}; expected ({n},), one per sample"
        )
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels % 1 != 0))
        if len(bad):
            raise ValueError(
                f"{path}: labels must be integers; label {int(bad[0])} is {labels[bad[0]]!r} "
                "(for float condition vectors store cond with shape (n, d))"
            )
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels have dtype {labels.dtype}; expected integers")
    labels = labels.astype(np.int64)
    if (labels < 0).any():
        neg = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(f"{path}: label {neg} is {labels[neg]}; labels must be >= 0")
    return labels


def _read_mapping(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def load_array_file(path: str | Path, name: str | None = None) -> ArrayData:
    """Samples (and optional labels) from a ``.npy``, ``.npz`` or ``.safetensors`` file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p} is a folder; use data.name=folder for a folder of images")
    suffix = p.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; use one of {ARRAY_SUFFIXES}")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: the file is empty (0 bytes)")
    try:
        if suffix == ".npy":
            arrays = {"x": np.load(p, allow_pickle=False)}
        else:
            arrays = _read_mapping(p)
    except Exception as err:  # corrupt files raise many kinds of errors
        raise ValueError(f"{p}: could not read the file ({err})") from None
    if "x" not in arrays:
        raise ValueError(
            f"{p}: no array named 'x' (found: {', '.join(sorted(arrays)) or 'none'}); "
            "store the samples under the key 'x'"
        )
    x = arrays["x"]
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    x = _check_samples(np.asarray(x), p)
    cond = None
    if labels is not None and np.asarray(labels).ndim == 2 and np.asarray(labels).dtype.kind == "f":
        cond = torch.from_numpy(_check_samples(np.asarray(labels), p, "condition vectors"))
        if cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"{p}: {cond.shape[0]} condition vectors for {x.shape[0]} samples; give one "
                "row per sample"
            )
    elif labels is not None:
        cond = torch.from_numpy(_check_labels(np.asarray(labels), x.shape[0], p))
    return ArrayData(torch.from_numpy(x), cond, name=name or p.stem)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    path: str | Path, image_size: int | None = None, name: str | None = None
) -> ArrayData:
    """Images (n, C, H, W) in [-1, 1] from a folder (labels from class sub-folders, if any)."""
    from PIL import Image

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder; use data.name=file for array files")
    files = _image_files(root)
    labels: list[int] | None = None
    if not files:
        classes = sorted(d for d in root.iterdir() if d.is_dir() and _image_files(d))
        for c, d in enumerate(classes):
            found = _image_files(d)
            files.extend(found)
            labels = (labels or []) + [c] * len(found)
    if not files:
        raise ValueError(
            f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} in the folder "
            "and in its sub-folders)"
        )
    images: list[Image.Image] = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as err:
            raise ValueError(f"{f}: not a readable image ({err})") from None
    gray = all(im.mode in ("1", "L", "I", "I;16", "F", "LA") for im in images)
    mode = "L" if gray else "RGB"
    arrays = []
    first_size = images[0].size
    for f, original in zip(files, images):
        img = original.convert(mode)
        if image_size is not None:
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        elif img.size != first_size:
            raise ValueError(
                f"{f}: size {img.size[0]}x{img.size[1]} differs from {files[0].name}'s "
                f"{first_size[0]}x{first_size[1]}; resize the images or set data.image_size"
            )
        a = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays)) * 2.0 - 1.0
    cond = None if labels is None else torch.tensor(labels)
    return ArrayData(x, cond, name=name or root.name)


__all__ = ["IMAGE_SUFFIXES", "ARRAY_SUFFIXES", "load_array_file", "load_image_folder"]
