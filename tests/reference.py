"""An independent float64 reference of the peephole LSTM, in numpy, written from the
equations (Gers & Schmidhuber 2000; Graves 2013), not from the implementation.

    i = σ(W_ii x + b_ii + W_hi h + b_hi + p_i(c_prev))
    f = σ(W_if x + b_if + W_hf h + b_hf + p_f(c_prev))
    g = tanh(W_ig x + b_ig + W_hg h + b_hg [+ p_c(c_prev)])
    c = f c_prev + i g       (clipped to [-clip, clip] with a cell clip, as TensorFlow's LSTMCell)
    o = σ(W_io x + b_io + W_ho h + b_ho + p_o(c))
    h = o tanh(c)            (h = W_hr h with a projection)

p(c) is w * c for a vector w, W @ c for a matrix W.
"""

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def peep(w, c):
    if w is None:
        return 0.0
    w = np.asarray(w, dtype=np.float64)
    return w * c if w.ndim == 1 else c @ w.T


def cell_step(x, h, c, p, clip=None):
    """One step for a batch: x (B, I), h (B, P), c (B, H); p a dict of float64 arrays."""
    H = c.shape[1]
    z = x @ p["weight_ih"].T + h @ p["weight_hh"].T
    if p.get("bias_ih") is not None:
        z = z + p["bias_ih"] + p["bias_hh"]
    z_i, z_f, z_g, z_o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
    i = sigmoid(z_i + peep(p.get("weight_ci"), c))
    f = sigmoid(z_f + peep(p.get("weight_cf"), c))
    g = np.tanh(z_g + peep(p.get("weight_cc"), c))
    c_new = f * c + i * g
    if clip is not None:
        c_new = np.clip(c_new, -clip, clip)
    o = sigmoid(z_o + peep(p.get("weight_co"), c_new))
    h_new = o * np.tanh(c_new)
    if p.get("weight_hr") is not None:
        h_new = h_new @ p["weight_hr"].T
    return h_new, c_new


def lstm(x, h0, c0, params, num_layers, bidirectional, clip=None):
    """x (T, B, I) time-major; h0/c0 (L*D, B, *); params: name -> array with nn.LSTM's
    names (weight_ih_l0, ..., weight_ci_l0_reverse). Returns (out, h_n, c_n)."""
    D = 2 if bidirectional else 1
    layer_in = x
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = {k[: -len(sfx)]: v for k, v in params.items() if k.endswith(sfx)}
            idx = layer * D + d
            h, c = h0[idx], c0[idx]
            T = layer_in.shape[0]
            out = [None] * T
            for t in range(T - 1, -1, -1) if d else range(T):
                h, c = cell_step(layer_in[t], h, c, p, clip)
                out[t] = h
            outs.append(np.stack(out))
            h_n.append(h)
            c_n.append(c)
        layer_in = np.concatenate(outs, axis=-1)
    return layer_in, np.stack(h_n), np.stack(c_n)


def numpy_params(module):
    return {k: v.detach().double().cpu().numpy() for k, v in module.named_parameters()}
