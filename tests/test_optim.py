"""PanelAdam: Adam for the dense parameters, Adam by rows for the per-series tables."""

import pytest
import torch

from peephole_lstm.forecast.optim import PanelAdam


def _pair(weight_decay):
    torch.manual_seed(0)
    a = torch.nn.Embedding(6, 3), torch.nn.Linear(3, 2)
    b = torch.nn.Embedding(6, 3), torch.nn.Linear(3, 2)
    for x, y in zip(a, b):
        y.load_state_dict(x.state_dict())
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
def test_every_row_in_every_batch_is_adam(weight_decay):
    a, b, ref, lazy = _pair(weight_decay)
    rows = torch.arange(6)
    for k in range(5):
        _step(a, ref, rows, k)
        _step(b, lazy, rows, k)
    for x, y in zip(a, b):
        for p, q in zip(x.parameters(), y.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    # the state has Adam's keys and values
    for p, q in zip([*a[0].parameters()], [*b[0].parameters()]):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(lazy.state[q][key], ref.state[p][key])
        assert float(lazy.state[q]["step"]) == float(ref.state[p]["step"]) == 5


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
