"""Asking for the GPU where there is none: clear errors that say what is missing, before
anything is allocated. (The CUDA paths themselves run under the simulator, in
test_cuda_simulator.py.)"""

import numpy as np
import pytest

import fastopt
from fastopt import device as _device


def _gpu_present():
    try:
        _device.cuda()
    except RuntimeError:
        return False
    return True


no_gpu = pytest.mark.skipif(_gpu_present(), reason="a usable GPU is present")


@no_gpu
def test_cuda_params_without_a_gpu_say_what_is_missing():
    with pytest.raises(RuntimeError, match=r"numba-cuda|NVIDIA GPU"):
        fastopt.FlatParams({"w": 3}, device="cuda")
    with pytest.raises(RuntimeError, match=r"numba-cuda|NVIDIA GPU"):
        fastopt.FlatParams({"w": 3}).to("cuda")
    with pytest.raises(RuntimeError, match=r"numba-cuda|NVIDIA GPU"):
        fastopt.dropout_mask(10, 0.5, seed=1, device="cuda")


@no_gpu
def test_a_cuda_optimizer_without_a_gpu_says_so_and_changes_nothing():
    params = fastopt.FlatParams({"w": 3})
    params.data[:] = 1.0
    with pytest.raises(RuntimeError, match=r"numba-cuda|NVIDIA GPU"):
        fastopt.AdamW(params, device="cuda")
    assert np.all(params.data == 1.0)


@pytest.mark.parametrize("device", ["gpu", "CUDA", None, 0])
def test_unknown_devices_are_refused_by_name(device):
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda', got device="):
        fastopt.FlatParams({"w": 3}, device=device)
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda'"):
        fastopt.FlatParams({"w": 3}).to(device)


def test_a_cpu_optimizer_says_where_the_params_are():
    params = fastopt.FlatParams({"w": 3})
    assert fastopt.SGD(params, device="cpu").device == "cpu"
    assert params.to("cpu") is params


def test_wrap_refuses_what_is_not_an_array():
    with pytest.raises(TypeError, match=r"data must be a numpy array or a CUDA array"):
        fastopt.FlatParams.wrap([1.0, 2.0], np.zeros(2, np.float32), {"w": 2})


@no_gpu
def test_a_cuda_model_without_a_gpu_says_so():
    with pytest.raises(RuntimeError, match=r"numba-cuda|NVIDIA GPU"):
        fastopt.MLP((4, 3, 2), device="cuda")
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda', got device='gpu'"):
        fastopt.MLP((4, 3, 2), device="gpu")


def test_a_cuda_model_without_cupy_names_it(monkeypatch):
    """With a GPU but no CuPy, the model says to install it (the GPU is faked here)."""
    import sys

    from fastopt.nn import arrays as _backend

    monkeypatch.setattr(_device, "cuda", lambda: object())
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.delitem(_backend._BACKENDS, "cuda", raising=False)
    with pytest.raises(RuntimeError, match=r"computes with CuPy, which is not installed: pip install 'fastopt\[cuda13\]'"):
        fastopt.MLP((4, 3, 2), device="cuda")
    assert "cuda" not in _backend._BACKENDS
