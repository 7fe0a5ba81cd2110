"""torch.jit.script of the layer and the cell: same results as eager, save/load round trip."""

import io
import warnings

import pytest
import torch

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell

pytestmark = pytest.mark.torchscript


def _script(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(m)


CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True, proj_size=2),
    dict(batch_first=True, bias=False, peephole="full", candidate_peephole=True),
    dict(num_layers=2, peephole="none"),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=[str(k) for k in CONFIGS])
def test_scripted_layer_matches_eager(backend, kw):
    m = PeepholeLSTM(3, 5, **kw).eval()
    s = _script(m)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    x = torch.randn(4, 6, 3)
    hx = (
        torch.randn(L * D, 4 if kw.get("batch_first") else 6, kw.get("proj_size") or 5),
        torch.randn(L * D, 4 if kw.get("batch_first") else 6, 5),
    )
    for args in ((x,), (x, hx)):
        out, (h, c) = m(*args)
        s_out, (s_h, s_c) = s(*args)
        torch.testing.assert_close(s_out, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s_c, c, rtol=1e-5, atol=1e-6)
    unbatched = x[:, 0] if not kw.get("batch_first") else x[0]
    torch.testing.assert_close(s(unbatched)[0], m(unbatched)[0], rtol=1e-5, atol=1e-6)
    buf = io.BytesIO()
    torch.jit.save(s, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    torch.testing.assert_close(loaded(x)[0], m(x)[0], rtol=1e-5, atol=1e-6)


def test_scripted_layer_trains():
    s = _script(PeepholeLSTM(3, 5, 2))
    s(torch.randn(4, 2, 3))[0].sum().backward()
    assert s.weight_ci_l1.grad is not None and s.weight_ci_l1.grad.abs().sum() > 0


@pytest.mark.parametrize("peephole", ["diagonal", "full", "none"])
def test_scripted_cell_matches_eager(peephole):
    cell = PeepholeLSTMCell(3, 5, peephole=peephole)
    s = _script(cell)
    x = torch.randn(2, 3)
    hx = (torch.randn(2, 5), torch.randn(2, 5))
    torch.testing.assert_close(s(x, hx)[1], cell(x, hx)[1])
    torch.testing.assert_close(s(x)[0], cell(x)[0])
    torch.testing.assert_close(s(x[0])[0], cell(x[0])[0])
