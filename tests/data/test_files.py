"""User files: array files and image folders load, and every bad input names file and index."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from flowpost.data.files import load_array_file, load_image_folder


def test_npy_roundtrip(tmp_path):
    x = np.random.RandomState(0).randn(20, 3).astype(np.float64)
    np.save(tmp_path / "a.npy", x)
    d = load_array_file(tmp_path / "a.npy")
    assert d.x.dtype == torch.float32 and d.spec.shape == (3,) and d.cond is None
    assert np.allclose(d.x.numpy(), x, atol=1e-6)
    assert d.name == "a"


def test_safetensors_and_npz_with_labels(tmp_path):
    x = np.random.RandomState(1).randn(10, 2).astype(np.float32)
    y = np.arange(10) % 3
    save_file({"x": x, "labels": y.astype(np.int64)}, str(tmp_path / "b.safetensors"))
    d = load_array_file(tmp_path / "b.safetensors")
    assert d.cond.tolist() == y.tolist() and d.spec.num_classes == 3
    np.savez(tmp_path / "c.npz", x=x, cond=y.astype(np.float32))
    assert load_array_file(tmp_path / "c.npz").cond.tolist() == y.tolist()


def test_nan_names_file_and_index(tmp_path):
    x = np.zeros((8, 2), dtype=np.float32)
    x[5, 1] = np.nan
    x[7, 0] = np.inf
    p = tmp_path / "bad.npy"
    np.save(p, x)
    with pytest.raises(ValueError, match=r"bad\.npy: sample 5 contains NaN or Inf \(2 bad"):
        load_array_file(p)
    save_file({"x": x}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"bad\.safetensors: sample 5"):
        load_array_file(tmp_path / "bad.safetensors")


def test_shape_dtype_empty_missing(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"flat\.npy.*reshape\(-1, 1\)"):
        load_array_file(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"empty\.npy.*empty"):
        load_array_file(tmp_path / "empty.npy")
    np.save(tmp_path / "cplx.npy", np.zeros((3, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match=r"cplx\.npy.*dtype complex64"):
        load_array_file(tmp_path / "cplx.npy")
    (tmp_path / "zero.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.npy.*empty"):
        load_array_file(tmp_path / "zero.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy: could not read"):
        load_array_file(tmp_path / "junk.npy")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_array_file(tmp_path / "nope.npy")
    save_file({"y": np.zeros((3, 2), dtype=np.float32)}, str(tmp_path / "nokey.safetensors"))
    with pytest.raises(ValueError, match="no array named 'x'.*found: y"):
        load_array_file(tmp_path / "nokey.safetensors")
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), labels=np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"lab\.npz: label 1 is -1"):
        load_array_file(tmp_path / "lab.npz")
    np.savez(tmp_path / "lab2.npz", x=np.zeros((3, 2)), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        load_array_file(tmp_path / "lab2.npz")
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("1,2")
        load_array_file(tmp_path / "x.csv")


def _save(path, array, mode="L"):
    Image.fromarray(array, mode=mode).save(path)


def test_image_folder_gray_and_classes(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            a = np.full((6, 6), 255 if c == "dog" else 0, dtype=np.uint8)
            _save(tmp_path / c / f"{i}.png", a)
    d = load_image_folder(tmp_path)
    assert d.x.shape == (6, 1, 6, 6) and d.cond.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(d.x[:3].max()) == -1.0 and float(d.x[3:].min()) == 1.0


def test_image_folder_rgb_resize_and_size_mismatch(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8), mode="RGB")
    _save(tmp_path / "b.jpg", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"b\.jpg: size 10x10 differs.*image_size"):
        load_image_folder(tmp_path)
    d = load_image_folder(tmp_path, image_size=4)
    assert d.x.shape == (2, 3, 4, 4) and d.cond is None
    assert float(d.x.min()) >= -1.0 and float(d.x.max()) <= 1.0


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"x\.png: not a readable image"):
        load_image_folder(tmp_path / "broken")


def test_doctests():
    import doctest

    import flowpost.data.files as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_npz_with_float_condition_vectors(tmp_path):
    x, cond = np.random.randn(6, 3), np.random.randn(6, 4).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, cond=cond)
    d = load_array_file(tmp_path / "v.npz")
    assert d.spec.cond_dim == 4 and d.spec.num_classes is None
    assert np.allclose(d.cond.numpy(), cond)
    np.savez(tmp_path / "w.npz", x=x, cond=cond[:5])
    with pytest.raises(ValueError, match="5 condition vectors for 6 samples"):
        load_array_file(tmp_path / "w.npz")
