"""PanelAdam: Adam for the dense parameters, Adam by rows for the per-series tables."""

import pytest
import torch

from peephole_lstm.forecast.optim import PanelAdam


def _pair(weight_decay, rows_ref=6):
    """The same embedding (6 rows) and linear layer twice: under Adam (its table cut to
    ``rows_ref`` rows) and under PanelAdam."""
    torch.manual_seed(0)
    b = torch.nn.Embedding(6, 3), torch.nn.Linear(3, 2)
    a = torch.nn.Embedding(rows_ref, 3), torch.nn.Linear(3, 2)
    with torch.no_grad():
        a[0].weight.copy_(b[0].weight[:rows_ref])
    a[1].load_state_dict(b[1].state_dict())
    ref = torch.optim.Adam([*a[0].parameters(), *a[1].parameters()], lr=0.05, weight_decay=weight_decay)
    lazy = PanelAdam([*b[0].parameters(), *b[1].parameters()], lazy=[b[0].weight], lr=0.05,
                     weight_decay=weight_decay)
    return a, b, ref, lazy


def _step(mods, opt, rows, seed):
    torch.manual_seed(seed)
    opt.zero_grad()
    emb, lin = mods
    loss = (lin(emb(rows)) - torch.randn(len(rows), 2)).square().sum()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_rows_of_the_batch_follow_adam(weight_decay):
    """Rows 0-4 in every batch, row 5 in none: rows 0-4 and the dense layer as Adam on a
    5-row table (its own code), row 5 untouched; the state has Adam's keys and values."""
    a, b, ref, lazy = _pair(weight_decay, rows_ref=5)
    row5 = b[0].weight[5].detach().clone()
    rows = torch.tensor([0, 1, 2, 3, 4, 2])
    for k in range(5):
        _step(a, ref, rows, k)
        _step(b, lazy, rows, k)
    torch.testing.assert_close(b[0].weight[:5], a[0].weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(b[0].weight[5], row5)
    for p, q in zip(a[1].parameters(), b[1].parameters()):
        assert torch.equal(p, q)
    state, want = lazy.state[b[0].weight], ref.state[a[0].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state[key][:5], want[key])
        assert not state[key][5].any()
    assert float(state["step"]) == float(want["step"]) == 5


def test_every_row_in_the_batch_is_adams_own_step():
    """A one-row table (a one-series model) or a batch with every row: bit for bit Adam."""
    a, b, ref, lazy = _pair(0.0)
    for k in range(4):
        _step(a, ref, torch.arange(6), k)
        _step(b, lazy, torch.arange(6), k)
    for x, y in zip(a, b):
        for p, q in zip(x.parameters(), y.parameters()):
            assert torch.equal(p, q)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_rows_outside_the_batch_keep_their_values_and_moments(weight_decay):
    """A row's update is Adam's run on the steps where its series was in the batch (with the
    table's step count in the bias corrections); the rows never in a batch do not move, and
    the dense parameters are exactly Adam's."""
    _, b, _, lazy = _pair(weight_decay)
    before = b[0].weight.detach().clone()
    _step(b, lazy, torch.tensor([1, 3, 3]), 0)
    m0 = lazy.state[b[0].weight]["exp_avg"].clone()
    _step(b, lazy, torch.tensor([3, 4]), 1)
    w, m = b[0].weight.detach(), lazy.state[b[0].weight]["exp_avg"]
    for r in (0, 2, 5):
        assert torch.equal(w[r], before[r]) and not m[r].any()
    assert torch.equal(m[1], m0[1])  # not in the second batch: its moment kept, not decayed
    assert not torch.equal(w[4], before[4]) and not torch.equal(m[3], 0.9 * m0[3])


def test_the_model_uses_it_for_its_series_embeddings():
    pytest.importorskip("lightning")
    from peephole_lstm import PeepholeLSTMRegressor

    model = PeepholeLSTMRegressor(input_size=1, hidden_size=4, horizon=2, series_embedding=2, ensemble=2)
    for net in model.nets:
        net.set_series_embedding(5, 2)
    opt = model.configure_optimizers()
    assert isinstance(opt, PanelAdam)
    assert opt._lazy_ids == {id(net.emb.weight) for net in model.nets}
    assert len(opt.param_groups) == 1  # one group, in parameter order: earlier checkpoints' optimizer state loads


def test_sparse_gradients_and_unsupported_options_are_refused():
    emb = torch.nn.Embedding(4, 2, sparse=True)
    opt = PanelAdam(emb.parameters(), lazy=[emb.weight])
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match="must be dense"):
        opt.step()
    with pytest.raises(ValueError, match="amsgrad"):
        PanelAdam(emb.parameters(), lazy=[emb.weight], amsgrad=True)
