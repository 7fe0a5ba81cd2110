"""Bad arguments and inputs raise what nn.LSTM / nn.LSTMCell raise, with the same message."""

import pytest
import torch
from torch import nn

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - we compare whatever is raised
        return type(exc), str(exc)
    return None


CTOR_CASES = [
    dict(input_size=4, hidden_size=0),
    dict(input_size=0, hidden_size=4),
    dict(input_size=4.0, hidden_size=4),
    dict(input_size=4, hidden_size=4.0),
    dict(input_size=4, hidden_size=4, num_layers=0),
    dict(input_size=4, hidden_size=4, bias=1),
    dict(input_size=4, hidden_size=4, batch_first="yes"),
    dict(input_size=4, hidden_size=4, dropout=2),
    dict(input_size=4, hidden_size=4, dropout=True),
    dict(input_size=4, hidden_size=4, proj_size=-1),
    dict(input_size=4, hidden_size=4, proj_size=4),
    dict(input_size=4, hidden_size=4, num_layers=1.5),
]


@pytest.mark.parametrize("kwargs", CTOR_CASES, ids=[str(k) for k in CTOR_CASES])
def test_constructor_errors_match_lstm(kwargs):
    expected = _raised(lambda: nn.LSTM(**kwargs))
    assert expected is not None
    got = _raised(lambda: PeepholeLSTM(**kwargs))
    assert got == expected


def test_peephole_option_errors():
    with pytest.raises(ValueError, match="peephole must be one of 'diagonal', 'full', 'none', got 'diag'"):
        PeepholeLSTM(3, 4, peephole="diag")
    with pytest.raises(TypeError, match="candidate_peephole should be of type bool"):
        PeepholeLSTMCell(3, 4, candidate_peephole=1)
    with pytest.raises(ValueError, match="candidate_peephole=True needs"):
        PeepholeLSTM(3, 4, peephole="none", candidate_peephole=True)
    with pytest.raises(TypeError):
        PeepholeLSTM(3, 4, 1, True, False, 0.0, False, 0, None, None, "full")  # keyword-only


def _lstm_pair(**kw):
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, 2, **kw)
    return lstm, PeepholeLSTM.from_lstm(lstm)


FORWARD_CASES = {
    "4d input": (lambda: torch.randn(3, 2, 4, 1), None),
    "1d input": (lambda: torch.randn(4), None),
    "wrong input_size": (lambda: torch.randn(3, 2, 3), None),
    "input dtype": (lambda: torch.randn(3, 2, 4).double(), None),
    "h batch": (lambda: torch.randn(3, 2, 4), lambda: (torch.randn(2, 3, 5), torch.randn(2, 2, 5))),
    "c size": (lambda: torch.randn(3, 2, 4), lambda: (torch.randn(2, 2, 5), torch.randn(2, 2, 6))),
    "layers": (lambda: torch.randn(3, 2, 4), lambda: (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
    "2d state for 3d input": (lambda: torch.randn(3, 2, 4), lambda: (torch.randn(2, 5), torch.randn(2, 5))),
    "3d state for 2d input": (lambda: torch.randn(3, 4), lambda: (torch.randn(2, 1, 5), torch.randn(2, 1, 5))),
    "empty sequence": (lambda: torch.randn(0, 2, 4), None),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_errors_match_lstm(backend, case):
    make_x, make_hx = FORWARD_CASES[case]
    lstm, ours = _lstm_pair()
    x = make_x()
    hx = make_hx() if make_hx else None
    expected = _raised(lambda: lstm(x, hx))
    assert expected is not None
    assert _raised(lambda: ours(x, hx)) == expected


def test_proj_state_size_error_matches_lstm():
    lstm, ours = _lstm_pair(proj_size=3)
    x = torch.randn(3, 2, 4)
    hx = (torch.randn(2, 2, 5), torch.randn(2, 2, 5))  # h must be proj_size
    assert _raised(lambda: ours(x, hx)) == _raised(lambda: lstm(x, hx))


def test_state_dtype_error_is_clear():
    _, ours = _lstm_pair()
    hx = (torch.randn(2, 2, 5).double(), torch.randn(2, 2, 5))
    with pytest.raises(RuntimeError, match=r"hidden\[0\] dtype \(torch.float64\) does not match input dtype"):
        ours(torch.randn(3, 2, 4), hx)


CELL_CASES = {
    "3d input": (lambda: torch.randn(2, 3, 4), None),
    "3d hx": (lambda: torch.randn(3, 4), lambda: (torch.randn(1, 3, 5), torch.randn(3, 5))),
    "input size": (lambda: torch.randn(3, 3), None),
    "batch": (lambda: torch.randn(3, 4), lambda: (torch.randn(2, 5), torch.randn(3, 5))),
    "h size": (lambda: torch.randn(3, 4), lambda: (torch.randn(3, 6), torch.randn(3, 5))),
    "c size": (lambda: torch.randn(3, 4), lambda: (torch.randn(3, 5), torch.randn(3, 6))),
    "unbatched hidden": (lambda: torch.randn(4), lambda: (torch.randn(1, 5), torch.randn(1, 5))),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_errors_match_lstm_cell(case):
    make_x, make_hx = CELL_CASES[case]
    x = make_x()
    hx = make_hx() if make_hx else None
    expected = _raised(lambda: nn.LSTMCell(4, 5)(x, hx))
    assert expected is not None
    assert _raised(lambda: PeepholeLSTMCell(4, 5)(x, hx)) == expected


def test_cell_dtype_error():
    with pytest.raises(RuntimeError, match=r"LSTMCell input dtype \(torch.float64\) does not match weight dtype"):
        PeepholeLSTMCell(4, 5)(torch.randn(2, 4, dtype=torch.float64))


def test_bad_backend_name():
    import peephole_lstm

    with pytest.raises(ValueError, match="backend must be one of"):
        peephole_lstm.set_backend("fast")
