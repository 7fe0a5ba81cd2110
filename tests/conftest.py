import pytest
import torch

import peephole_lstm

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
