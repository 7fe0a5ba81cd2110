"""Deploy and interoperate: torch.compile, torch.export, TorchScript files, ONNX, TensorFlow."""

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from peephole_lstm import PeepholeLSTM

COMPILE_CONFIGS = [
    dict(num_layers=2, bidirectional=True, proj_size=2),
    dict(peephole="full", candidate_peephole=True, batch_first=True),
    dict(peephole="none"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kw", COMPILE_CONFIGS, ids=[str(k) for k in COMPILE_CONFIGS])
def test_torch_compile_fullgraph_matches_eager(kw):
    torch._dynamo.reset()
    m = PeepholeLSTM(3, 5, **kw)
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(6, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], m(x)[0], rtol=1e-5, atol=1e-6)
    out_c = compiled(x)[0]
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x)[0].square().sum().backward()
    for g, p in zip(grads_c, m.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_export_dynamic_batch_and_sequence(tmp_path, batch_first):
    m = PeepholeLSTM(3, 5, 2, bidirectional=True, batch_first=batch_first).eval()
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    dims = {0: batch, 1: seq} if batch_first else {0: seq, 1: batch}
    x = torch.randn(4, 6, 3)
    ep = torch.export.export(m, (x,), dynamic_shapes=(dims,))
    path = tmp_path / "lstm.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    for shape in [(4, 6, 3), (1, 9, 3), (7, 1, 3)]:
        x2 = torch.randn(*shape)
        for got in (ep.module()(x2), loaded(x2)):
            torch.testing.assert_close(got[0], m(x2)[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1][1], m(x2)[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.torchscript
def test_torchscript_file_loads_in_a_fresh_process_without_the_package(tmp_path):
    m = PeepholeLSTM(3, 5, 2, bidirectional=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(m), tmp_path / "m.pt")
    x = torch.randn(6, 2, 3)
    torch.save(x, tmp_path / "x.pt")
    torch.save(m(x)[0].detach(), tmp_path / "y.pt")
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1] + '/m.pt'); "
        "x = torch.load(sys.argv[1] + '/x.pt'); y = torch.load(sys.argv[1] + '/y.pt'); "
        "assert 'peephole_lstm' not in sys.modules; torch.testing.assert_close(m(x)[0], y); print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd="/",
                         env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("what", ["lstm", "cell"])
def test_torch_save_of_the_module_loads_with_weights_only(tmp_path, what):
    """torch.load (weights_only=True, torch's default) of torch.save(model) in a new
    process that imports peephole_lstm; nn.LSTM's own classes are not on torch's list."""
    from peephole_lstm import PeepholeLSTMCell

    if what == "lstm":
        m = PeepholeLSTM(3, 5, 2, bidirectional=True, proj_size=2, peephole="full").eval()
        x = torch.randn(6, 2, 3)
    else:
        m = PeepholeLSTMCell(3, 5).eval()
        x = torch.randn(2, 3)
    torch.save(m, tmp_path / "m.pt")
    torch.save((x, m(x)), tmp_path / "xy.pt")
    code = (
        "import sys, torch, peephole_lstm; d = sys.argv[1]; "
        "m = torch.load(d + '/m.pt'); x, y = torch.load(d + '/xy.pt'); "
        "torch.testing.assert_close(m(x), y, rtol=1e-6, atol=1e-7); print(type(m).__name__)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == type(m).__name__
    code = "import sys, torch; torch.load(sys.argv[1] + '/m.pt')"  # without the import: torch's refusal
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0 and "Unsupported global" in res.stderr


# ----------------------------------------------------------------------------- ONNX
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from peephole_lstm import export_onnx  # noqa: E402


def _session(data: bytes):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


ONNX_CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, batch_first=True, bias=False),
    dict(peephole="none", bidirectional=True),
]


@pytest.mark.parametrize("opset", [14, 18])
@pytest.mark.parametrize("kw", ONNX_CONFIGS, ids=[str(k) for k in ONNX_CONFIGS])
def test_onnx_export_runs_in_onnxruntime_and_matches(kw, opset, tmp_path):
    torch.manual_seed(0)
    m = PeepholeLSTM(3, 6, **kw).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "weight_c" in name:
                p.uniform_(-1, 1)  # peepholes that matter
    path = tmp_path / "m.onnx"
    proto = export_onnx(m, path, torch.randn(5, 2, 3), opset=opset)
    assert proto.opset_import[0].version == opset
    lstm_nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == m.num_layers
    has_p = [len(n.input) > 7 and n.input[7] != "" for n in lstm_nodes]
    assert has_p == [kw.get("peephole", "diagonal") == "diagonal"] * m.num_layers
    if kw.get("bidirectional"):
        assert all(onnx.helper.get_attribute_value(a) == b"bidirectional" for n in lstm_nodes
                   for a in n.attribute if a.name == "direction")
    sess = _session(path.read_bytes())
    D = 2 if kw.get("bidirectional") else 1
    for T, B in [(5, 2), (11, 7), (1, 1)]:  # dynamic sequence and batch
        x = torch.randn(B, T, 3) if kw.get("batch_first") else torch.randn(T, B, 3)
        want = m(x)
        got = sess.run(None, {"input": x.numpy()})
        for g, w in zip(got, [want[0], *want[1]]):
            np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-5, atol=1e-5)
        h0 = torch.randn(m.num_layers * D, B, 6)
        c0 = torch.randn(m.num_layers * D, B, 6)
        want = m(x, (h0, c0))
        got = sess.run(None, {"input": x.numpy(), "h0": h0.numpy(), "c0": c0.numpy()})
        for g, w in zip(got, [want[0], *want[1]]):
            np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_export_loads_in_onnxruntime_without_warnings(capfd):
    """ORT loads the exported graph without warning 'Initializer h0 appears in graph inputs'."""
    buf = io.BytesIO()
    export_onnx(PeepholeLSTM(3, 6, 2), buf)
    so = ort.SessionOptions()
    so.log_severity_level = 1  # info and up: warnings included
    capfd.readouterr()
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    err = capfd.readouterr().err
    assert "appears in graph inputs" not in err and "[W:" not in err, err
    assert [i.name for i in sess.get_inputs()] == ["input", "h0", "c0"]
    assert sess.get_overridable_initializers() == []
    with pytest.raises(ValueError, match="opset"):
        export_onnx(PeepholeLSTM(3, 6), io.BytesIO(), opset=13)


@pytest.mark.parametrize("kw", ONNX_CONFIGS, ids=[str(k) for k in ONNX_CONFIGS])
def test_onnx_round_trip_is_exact(kw):
    m = PeepholeLSTM(3, 6, **kw).eval()
    buf = io.BytesIO()
    export_onnx(m, buf)
    back = PeepholeLSTM.from_onnx(buf.getvalue())
    assert back.batch_first == m.batch_first and back.bidirectional == m.bidirectional
    assert back.peephole == m.peephole and back.num_layers == m.num_layers
    want = m.state_dict()
    got = back.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(back(x)[0], m(x)[0], rtol=1e-6, atol=1e-7)  # same weights (above), other memory


@pytest.mark.parametrize(
    "kw,reason",
    [
        (dict(proj_size=2), "proj_size"),
        (dict(peephole="full"), 'peephole="full"'),
        (dict(candidate_peephole=True), "candidate_peephole"),
    ],
)
def test_onnx_refuses_what_it_cannot_express(kw, reason):
    with pytest.raises(ValueError, match="cannot export to ONNX's LSTM operator: .*" + reason):
        export_onnx(PeepholeLSTM(3, 6, **kw), io.BytesIO())


def test_from_onnx_of_a_foreign_single_node_model():
    """An ONNX LSTM built by hand from the operator spec (weights as Constant nodes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    I, H = 2, 3
    W = rng.uniform(-1, 1, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-1, 1, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-1, 1, (1, 8 * H)).astype(np.float32)
    P = rng.uniform(-1, 1, (1, 3 * H)).astype(np.float32)
    consts = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a)) for n, a in
              (("W", W), ("R", R), ("B", B), ("P", P))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y"], hidden_size=H)
    graph = helper.make_graph(consts + [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 1, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 1, 1, H])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    m = PeepholeLSTM.from_onnx(proto)
    x = rng.normal(size=(4, 1, I)).astype(np.float32)
    (y,) = _session(proto.SerializeToString()).run(None, {"X": x})
    np.testing.assert_allclose(m(torch.from_numpy(x))[0].detach().numpy(), y[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="clip"):
        proto.graph.node[-1].attribute.append(helper.make_attribute("clip", 3.0))
        PeepholeLSTM.from_onnx(proto)


# ------------------------------------------------------------------------ TensorFlow
def _tf_reference(x, kernel, bias, wi, wf, wo, forget_bias, cell_clip=None):
    """TensorFlow v1 LSTMCell(use_peepholes=True) as its documentation and source state:
    lstm_matrix = [x, m] @ kernel + bias; i, j, f, o = split(lstm_matrix, 4, axis=1);
    c = σ(f + forget_bias + w_f_diag c) c + σ(i + w_i_diag c) tanh(j);
    c = clip_by_value(c, -cell_clip, cell_clip) if cell_clip is set; m = σ(o + w_o_diag c) tanh(c)."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    H = kernel.shape[1] // 4
    c = np.zeros((x.shape[1], H))
    m = np.zeros((x.shape[1], H))
    outs = []
    for x_t in x:
        z = np.concatenate([x_t, m], 1) @ kernel + bias
        i, j, f, o = np.split(z, 4, axis=1)
        c = sig(f + forget_bias + wf * c) * c + sig(i + wi * c) * np.tanh(j)
        if cell_clip is not None:
            c = np.clip(c, -cell_clip, cell_clip)
        m = sig(o + wo * c) * np.tanh(c)
        outs.append(m)
    return np.stack(outs), m, c


@pytest.mark.parametrize("forget_bias,cell_clip", [(1.0, None), (0.0, None), (2.5, None), (1.0, 0.3)])
def test_from_tensorflow_matches_tf_equations(forget_bias, cell_clip):
    rng = np.random.default_rng(1)
    I, H = 3, 4
    kernel = rng.uniform(-0.7, 0.7, (I + H, 4 * H))
    bias = rng.uniform(-0.5, 0.5, 4 * H)
    wi, wf, wo = (rng.uniform(-1, 1, H) for _ in range(3))
    x = rng.normal(size=(9, 2, I))
    m = PeepholeLSTM.from_tensorflow(kernel, bias, wi, wf, wo, forget_bias=forget_bias, cell_clip=cell_clip,
                                     dtype=torch.float64)
    out, (h, c) = m(torch.from_numpy(x))
    r_out, r_h, r_c = _tf_reference(x, kernel, bias, wi, wf, wo, forget_bias, cell_clip)
    if cell_clip is not None:
        assert np.abs(r_c).max() == cell_clip  # the clip mattered
    np.testing.assert_allclose(out.detach().numpy(), r_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c[0].detach().numpy(), r_c, rtol=1e-12, atol=1e-13)


def test_from_tensorflow_refuses_bad_clip_and_bad_shapes():
    k, b, d = np.zeros((5, 8)), np.zeros(8), np.zeros(2)
    with pytest.raises(ValueError, match="cell_clip must be a positive"):
        PeepholeLSTM.from_tensorflow(k, b, d, d, d, cell_clip=-3.0)
    with pytest.raises(ValueError, match=r"w_i_diag, w_f_diag, w_o_diag must have shape \(2,\)"):
        PeepholeLSTM.from_tensorflow(k, b, np.zeros(3), d, d)
    with pytest.raises(ValueError, match="kernel must be"):
        PeepholeLSTM.from_tensorflow(k, np.zeros(7), d, d, d)


# ------------------------------------------------- torch.onnx.export of a whole model
class _WordLM(torch.nn.Module):
    """A model that contains a PeepholeLSTM, as in PyTorch's word_language_model example."""

    def __init__(self, **kw):
        super().__init__()
        D = 2 if kw.get("bidirectional") else 1
        self.emb = torch.nn.Embedding(20, 6)
        self.rnn = PeepholeLSTM(6, 8, 2, **kw)
        self.dec = torch.nn.Linear(D * (kw.get("proj_size") or 8), 20)

    def forward(self, x, h0, c0):
        out, (h, c) = self.rnn(self.emb(x), (h0, c0))
        return self.dec(out), h, c


WHOLE_CONFIGS = [
    dict(),  # ONNX LSTM nodes with P
    dict(peephole="none", bidirectional=True),  # LSTM nodes without P
    dict(proj_size=3),  # a loop over time
    dict(peephole="full", candidate_peephole=True, bidirectional=True),
]


def _whole_model_export(m, args, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            T, B = torch.export.Dim("T"), torch.export.Dim("B")
            prog = torch.onnx.export(m, args, dynamo=True, dynamic_shapes=({0: T, 1: B}, {1: B}, {1: B}),
                                     verbose=False)
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(m, args, f, dynamo=False, input_names=["x", "h0", "c0"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "h0": {1: "B"}, "c0": {1: "B"}})
        return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kw", WHOLE_CONFIGS, ids=[str(k) for k in WHOLE_CONFIGS])
def test_torch_onnx_export_of_a_whole_model(kw, dynamo):
    """torch.onnx.export(model) of any model containing PeepholeLSTM, unchanged: standard
    LSTM nodes (with P for diagonal peepholes) where ONNX's LSTM expresses the configuration, a
    Scan/Loop over time otherwise; dynamic length and batch; ONNX Runtime within 1e-5."""
    torch.manual_seed(0)
    m = _WordLM(**kw).eval()
    with torch.no_grad():
        for name, p in m.rnn.named_parameters():
            if "weight_c" in name:
                p.uniform_(-1, 1)  # peepholes that matter
    D = 2 if kw.get("bidirectional") else 1
    H_out = kw.get("proj_size") or 8

    def inputs(T, B):
        return torch.randint(0, 20, (T, B)), torch.randn(2 * D, B, H_out), torch.randn(2 * D, B, 8)

    proto = _whole_model_export(m, inputs(7, 3), dynamo)
    ops = [n.op_type for n in proto.graph.node]
    maps = not kw.get("proj_size") and kw.get("peephole", "diagonal") != "full"
    if maps:
        lstm = [n for n in proto.graph.node if n.op_type == "LSTM"]
        assert len(lstm) == 2, ops  # one node per layer, both directions in it
        has_p = [len(n.input) > 7 and n.input[7] != "" for n in lstm]
        assert has_p == [kw.get("peephole", "diagonal") == "diagonal"] * 2
    else:
        assert "LSTM" not in ops and ops.count("Scan" if dynamo else "Loop") == 2 * D, ops
    assert "peephole_lstm" not in str([n.domain for n in proto.graph.node])
    sess = _session(proto.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    for T, B in [(7, 3), (12, 2), (1, 1)]:
        args = inputs(T, B)
        got = sess.run(None, dict(zip(names, [a.numpy() for a in args])))
        with torch.no_grad():
            want = m(*args)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)
