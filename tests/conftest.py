import contextlib

import pytest
import torch

import peephole_lstm
from peephole_lstm import tuning

BACKENDS = ["reference", "python", "cpp"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per implementation: the autograd reference loop, the fused op with
    its pure-PyTorch kernel, and the fused op with its C++ kernel."""
    old = peephole_lstm.get_backend()
    peephole_lstm.set_backend(request.param)
    if request.param == "cpp":
        if "cuda" in request.node.name or request.node.path.name == "test_cuda.py":
            pytest.skip("the C++ kernel is CPU-only")
        peephole_lstm.build_extension()
    yield request.param
    peephole_lstm.set_backend(old)


@pytest.fixture
def knobs():
    """``knobs(name=value, ...)``: set tuning knobs in this process until the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda **values: stack.enter_context(tuning.override(**values))


@pytest.fixture
def write_csv(tmp_path):
    """``write_csv(frame, name="s.csv")``: the frame written to ``tmp_path / name`` without its
    index; returns the path as a string."""

    def write(frame, name: str = "s.csv") -> str:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def count_launches(monkeypatch):
    """``count_launches(module, name)``: from now on every launch of the Triton kernel
    ``module.name`` is recorded (its grid) in the list returned, and still runs."""

    def install(module, name: str) -> list:
        launches = []
        kernel = getattr(module, name)

        class Spy:
            def __getitem__(self, grid):
                launches.append(grid)
                return kernel[grid]

        monkeypatch.setattr(module, name, Spy())
        return launches

    return install
