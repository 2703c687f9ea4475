"""Test set-up: the Triton interpreter on machines without CUDA, fresh seeds, GPU markers."""

import os

# Must happen before anything imports triton: without a GPU the kernels run in the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # xdist runs one worker per core: a second intra-op thread per worker only oversubscribes
    # the cores, and OpenMP's spinning barriers then make small ops ~10-100x slower.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_launch_plans():
    """Every test decides its launches anew: tests patch what the decisions read (split
    counts, kernel choices), which the cached plans of an earlier test would not see."""
    yield
    if "triton_nsr.kernels.autotune" in __import__("sys").modules:
        from triton_nsr.kernels.autotune import clear_launch_plans

        clear_launch_plans()


@pytest.fixture(autouse=True)
def _fresh_seed():
    """A new random seed per test, printed on failure, so inputs are fresh but reproducible."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed


def _poisoned(factory):
    def make(*args, **kwargs):
        tensor = factory(*args, **kwargs)
        if tensor.is_floating_point() or tensor.is_complex():
            tensor.fill_(float("nan"))
        return tensor

    return make


@pytest.fixture
def poison_allocations(monkeypatch):
    """Every new tensor from torch.empty / empty_like / empty_strided / new_empty starts as NaN.

    A kernel that forgets to write an element then leaves a NaN that the comparison catches.
    """
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch, "empty_strided", _poisoned(torch.empty_strided))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))
