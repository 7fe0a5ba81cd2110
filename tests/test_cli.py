"""The peephole-lstm CLI end to end: every config, predict, errors, resume after a kill, DDP."""

import glob
import os
import sys

import pytest
import torch
import yaml

pytest.importorskip("lightning")

from peephole_lstm.forecast.cli import main  # noqa: E402

from .helpers import ROOT, run_python  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def _run(args, cwd, timeout=300):
    """The CLI in a process of its own."""
    return run_python(["-m", "peephole_lstm", *args], cwd, timeout=timeout)


def _files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def _main_here(args, cwd, monkeypatch, capsys):
    """The CLI's ``main`` in this process, in ``cwd``: (exit code, stdout, stderr). Saves an
    interpreter and Lightning start-up (7-10 s on 2 cores) per call; an exception other than
    SystemExit fails the test, as a traceback would on the command line. Every kind of call
    also runs once as a new process through the entry point (``_run``): a fit and predict, a
    bad input, a missing checkpoint, the kill before a resume, DDP."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["peephole-lstm"])  # not pytest's own arguments
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _ok_here(args, cwd, monkeypatch, capsys):
    """``_main_here`` of a command that must succeed: its stdout."""
    code, out, err = _main_here(args, cwd, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_every_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", config, "--trainer.fast_dev_run=true"])


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", CONFIGS[0], "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["peephole"] == "diagonal" and cfg["data"]["window"] == 52


def _small(tmp_path):
    cfg = {
        "seed_everything": 7,
        "model": {"hidden_size": 8, "num_layers": 2, "dropout": 0.2},
        "data": {"dataset": "synthetic", "window": 12, "batch_size": 16},
        "trainer": {
            "max_epochs": 4, "accelerator": "cpu", "devices": 1, "limit_train_batches": 6,
            "limit_val_batches": 2, "enable_progress_bar": False, "enable_model_summary": False,
            "logger": False, "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True,
                                         "enable_version_counter": False}}],
        },
        "test_after_fit": False,
    }
    return cfg


def _write(cfg, path):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_fit_tests_and_predict_writes_csv_and_png(tmp_path, monkeypatch, capsys):
    cfg = _small(tmp_path)
    cfg["test_after_fit"] = True
    cfg["trainer"]["max_epochs"] = 1
    cfg["forecast"] = {"output_dir": str(tmp_path / "pred")}
    path = _write(cfg, tmp_path / "c.yaml")
    fit = _run(["fit", "--config", path], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    for key in ("test_naive_mse", "test_snaive_mse", "test_mase", "test_mape", "test_coverage_80", "test_width_95",
                "test_msis_95"):
        assert key in fit.stdout, key
    # the test table says what it scored: 300 one-step targets, rows 1700 .. 1999
    assert "test: scored 300 targets (1-step forecasts: 300 windows), 1700 .. 1999" in fit.stdout
    assert "run directory: " in fit.stdout
    # no lines the user cannot act on: Lightning's cloud-service tips, its torch deprecation
    assert "Tip:" not in fit.stderr and "LeafSpec" not in fit.stderr, fit.stderr[-3000:]
    # fit ends with the forecast written (no second command), and says where
    assert (tmp_path / "pred" / "forecast.csv").exists() and "wrote " in fit.stdout
    (tmp_path / "pred" / "forecast.csv").unlink()
    _ok_here(["predict", "--config", path, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")], tmp_path, monkeypatch,
             capsys)
    import pandas as pd

    frame = pd.read_csv(tmp_path / "pred" / "forecast.csv")
    assert list(frame.columns) == ["series", "kind", "time", "origin", "step", "forecast", "lo_80", "hi_80",
                                   "lo_95", "hi_95", "actual", "naive", "snaive"]
    back, fut = frame[frame["kind"] == "backtest"], frame[frame["kind"] == "future"]
    assert len(back) == 300  # 2000 rows * 15% test = 300 target rows, horizon 1: one forecast each
    assert back["time"].iloc[0] == 1700 and back["origin"].iloc[0] == 1699
    assert len(fut) == 1 and fut["time"].iloc[0] == 2000 and fut["origin"].iloc[0] == 1999  # after the last row
    assert fut["actual"].isna().all() and back["actual"].notna().all()
    assert (frame["lo_95"] <= frame["lo_80"]).all() and (frame["lo_80"] < frame["forecast"]).all()
    assert (frame["forecast"] < frame["hi_80"]).all() and (frame["hi_80"] <= frame["hi_95"]).all()
    assert (tmp_path / "pred" / "forecast.png").stat().st_size > 10_000


def test_each_run_gets_its_own_directory_and_resume_reuses_the_latest(tmp_path, monkeypatch, capsys):
    """A second fit writes to a run directory of its own: the first's checkpoints stay."""
    cfg = _small(tmp_path)
    cfg["trainer"]["max_epochs"] = 1
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": "{run_dir}", "name": "", "version": ""}}
    cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"save_last": True, "enable_version_counter": False}}]
    path = _write(cfg, tmp_path / "c.yaml")
    for k in (1, 2):
        out = _ok_here(["fit", "--config", path], tmp_path, monkeypatch, capsys)
        run = tmp_path / "synthetic" / f"version_{k}"
        assert f"run directory: {run}" in out
        assert (run / "checkpoints" / "last.ckpt").exists() and (run / "metrics.csv").exists()
    # the resume from the command line: not a terminal, so no progress bar output (carriage returns)
    res = _run(["fit", "--config", path, "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run directory: {tmp_path / 'synthetic' / 'version_2'}" in res.stdout
    assert not (tmp_path / "synthetic" / "version_3").exists()
    assert "\r" not in res.stdout + res.stderr
    # nor Lightning's warnings that the run's logs "will be deleted" (a resume merges them back)
    # and that its checkpoint directory is not empty
    assert "exists and is not empty" not in res.stderr, res.stderr[-3000:]


def _one_error_line(stderr, message):
    assert message in stderr
    assert "Traceback" not in stderr and "usage:" not in stderr
    assert [line for line in stderr.splitlines() if "error" in line.lower()] == [
        next(line for line in stderr.splitlines() if line.startswith("peephole-lstm: error: "))
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data.csv_path", "missing.csv"], "CSV file not found: missing.csv"),
        (["--data.target", "nope"], "unknown column 'nope'"),
        (["--data.window", "5000"], "series too short"),
        (["--model.not_a_key", "1"], "not_a_key"),
        (["--trainer.max_epoch", "1"], "max_epoch"),  # no prefix matching of keys
        (["--data.window", "abc"], "data.window"),
        (["--config", "missing.yaml"], "File does not exist"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, args, message, monkeypatch, capsys):
    cwd = tmp_path / "work"
    cwd.mkdir()
    code, _, err = _main_here(["fit", "--config", CONFIGS[0], *args], cwd, monkeypatch, capsys)
    assert code == 2
    _one_error_line(err, message)
    assert _files(cwd) == []


def test_bad_input_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    """The same through the installed entry point, in a new process: exit status 2, one line."""
    res = _run(["fit", "--config", CONFIGS[0], "--data.target", "nope"], tmp_path)
    assert res.returncode == 2
    _one_error_line(res.stderr, "unknown column 'nope'")
    assert _files(tmp_path) == []


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """The killed run is a process of its own (SIGKILL); the straight run and the resume run in
    this one."""
    straight = tmp_path / "straight"
    crashed = tmp_path / "crashed"
    _ok_here(["fit", "--config", _write(_small(straight), tmp_path / "a.yaml")], tmp_path, monkeypatch, capsys)
    kill_cfg = _small(crashed)
    kill_cfg["trainer"]["callbacks"].append({"class_path": "tests.callbacks.KillAt", "init_args": {"epoch": 2, "batch": 3}})
    b = _run(["fit", "--config", _write(kill_cfg, tmp_path / "b.yaml")], tmp_path)
    assert b.returncode != 0  # killed
    assert torch.load(crashed / "ckpt" / "last.ckpt", weights_only=False)["epoch"] == 1
    _ok_here(["fit", "--config", _write(_small(crashed), tmp_path / "c.yaml"), "--ckpt_path", "last"], tmp_path,
             monkeypatch, capsys)
    sa = torch.load(straight / "ckpt" / "last.ckpt", weights_only=False)
    sc = torch.load(crashed / "ckpt" / "last.ckpt", weights_only=False)
    assert sa["epoch"] == sc["epoch"] == 3
    # Same code path, separate processes: BLAS results may depend on buffer alignment, so equal
    # to float32 rounding (a replayed or reshuffled batch moves the weights by orders more).
    for key, value in sa["state_dict"].items():
        torch.testing.assert_close(sc["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def _logged(tmp_path, root):
    """_small with the default config's logger and checkpoints: both in the run's directory, and
    every logged row flushed at once (so a kill leaves them on disk)."""
    cfg = _small(root)
    cfg["trainer"]["log_every_n_steps"] = 1
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": "{run_dir}", "name": "", "version": "",
                                              "flush_logs_every_n_steps": 1}}
    cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"save_last": True, "enable_version_counter": False}}]
    return cfg


def test_resume_keeps_the_metrics_logged_before_the_kill(tmp_path, monkeypatch, capsys):
    """A resumed run's metrics.csv holds every step, as the uninterrupted run's does (the
    logger deletes the metrics.csv it finds; the CLI sets it aside and merges it back)."""
    import pandas as pd

    _ok_here(["fit", "--config", _write(_logged(tmp_path, tmp_path / "straight"), tmp_path / "a.yaml")], tmp_path,
             monkeypatch, capsys)
    kill = _logged(tmp_path, tmp_path / "crashed")
    kill["trainer"]["callbacks"].append({"class_path": "tests.callbacks.KillAt", "init_args": {"epoch": 2, "batch": 3}})
    b = _run(["fit", "--config", _write(kill, tmp_path / "b.yaml")], tmp_path)
    assert b.returncode != 0
    run = tmp_path / "crashed" / "synthetic" / "version_1"
    before = pd.read_csv(run / "metrics.csv")
    assert before["step"].max() >= 14  # rows of epoch 2 (steps 12-17), after the last checkpoint
    _ok_here(["fit", "--config", _write(_logged(tmp_path, tmp_path / "crashed"), tmp_path / "c.yaml"),
              "--ckpt_path", "last"], tmp_path, monkeypatch, capsys)
    straight = pd.read_csv(tmp_path / "straight" / "synthetic" / "version_1" / "metrics.csv")
    resumed = pd.read_csv(run / "metrics.csv")
    assert not (run / "metrics_before_resume.csv").exists()
    assert list(resumed.columns) == list(straight.columns)
    assert resumed["step"].tolist() == straight["step"].tolist()
    pd.testing.assert_frame_equal(resumed, straight, rtol=1e-4, atol=1e-6)


def test_predict_leaves_the_runs_training_record_alone(tmp_path, monkeypatch, capsys):
    cfg = _logged(tmp_path, tmp_path)
    cfg["trainer"]["max_epochs"] = 1
    path = _write(cfg, tmp_path / "c.yaml")
    _ok_here(["fit", "--config", path], tmp_path, monkeypatch, capsys)
    run = tmp_path / "synthetic" / "version_1"
    kept = {name: (run / name).read_bytes() for name in ("metrics.csv", "hparams.yaml", "config.yaml")}
    for sub in ("predict", "test"):
        _ok_here([sub, "--config", path, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], tmp_path, monkeypatch,
                 capsys)
        assert (run / sub / "config.yaml").exists()
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert (run / "forecast.csv").exists()  # predict writes the forecast of the checkpoint's run


def test_predict_or_test_without_a_checkpoint_is_an_error_that_names_one(tmp_path, monkeypatch, capsys):
    """An untrained network's forecast is noise: predict/test/validate need --ckpt_path, and
    the error names the latest fit's best checkpoint when there is one."""
    for sub in ("predict", "test", "validate"):
        code, _, err = _main_here([sub, "--config", CONFIGS[0]], tmp_path, monkeypatch, capsys)
        assert code == 2
        _one_error_line(err, f"peephole-lstm: error: {sub} needs a trained model: pass --ckpt_path; there is no fit "
                             "of this data under runs/co2 yet")
    assert _files(tmp_path) == []
    best = tmp_path / "runs" / "co2" / "version_2" / "checkpoints" / "best.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    res = _run(["predict", "--config", CONFIGS[0]], tmp_path)  # and from the command line
    assert res.returncode == 2
    _one_error_line(res.stderr, "e.g. --ckpt_path runs/co2/version_2/checkpoints/best.ckpt")


def test_fit_on_a_long_format_panel_forecasts_every_series(tmp_path, monkeypatch, capsys):
    """--data.id_column trains one global model; the forecast and the per-series metrics
    cover every series."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frames = []
    for name, n in (("north", 150), ("south", 110)):
        t = np.arange(n)
        frames.append(pd.DataFrame({"id": name, "date": pd.date_range("2021-01-01", periods=n, freq="D"),
                                    "load": 5 + np.sin(2 * np.pi * t / 7) + rng.normal(scale=0.1, size=n)}))
    csv = tmp_path / "panel.csv"
    pd.concat(frames).to_csv(csv, index=False)
    cfg = _small(tmp_path)
    cfg["model"]["ar_window"] = "auto"  # one AR term per series
    cfg["data"] = {"csv_path": str(csv), "id_column": "id", "window": 14, "horizon": 3, "batch_size": 16}
    cfg["trainer"]["max_epochs"] = 2
    cfg["test_after_fit"] = True
    path = _write(cfg, tmp_path / "p.yaml")
    out = _ok_here(["fit", "--config", path], tmp_path, monkeypatch, capsys)
    run = tmp_path / "panel" / "version_1"
    per = pd.read_csv(run / "metrics_per_series.csv")
    assert sorted(per["series"]) == ["north", "south"] and (per["targets"] > 0).all()
    frame = pd.read_csv(run / "forecast.csv")
    fut = frame[frame["kind"] == "future"]
    assert sorted(set(fut["series"])) == ["north", "south"] and len(fut) == 6  # 3 steps each
    assert fut[fut["series"] == "south"]["time"].tolist() == ["2021-04-21", "2021-04-22", "2021-04-23"]
    assert "2 series" in out
    # predict from the checkpoint without the backtest: the same future rows and intervals (the
    # backtest's residuals still calibrate them)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    # daily: 2 * 7 + 1 = 15 lags each, one more than the window (the items carry 15 rows)
    assert ckpt["series_names"] == ["north", "south"] and ckpt["state_dict"]["net.ar.weight"].shape == (6, 15)
    assert ckpt["ar_lags"] == [15, 15] and ckpt["lstm_window"] == 14
    _ok_here(["predict", "--config", path, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--data.predict", "future",
              "--forecast.output_dir", str(tmp_path / "only")], tmp_path, monkeypatch, capsys)
    only = pd.read_csv(tmp_path / "only" / "forecast.csv")
    assert set(only["kind"]) == {"future"} and len(only) == 6
    cols = ["forecast", "lo_80", "hi_80", "lo_95", "hi_95"]
    np.testing.assert_allclose(only[cols].to_numpy(), fut[cols].to_numpy(), rtol=1e-5)
    assert (only["hi_95"] > only["hi_80"]).all() and (only["hi_80"] > only["forecast"]).all()


def test_ar_window_auto_is_resolved_from_the_data_and_saved_as_a_number(tmp_path, monkeypatch, capsys):
    """--model.ar_window auto: 2 season + 1 lags (3 without a season), beyond the window if
    need be, but at most half the training rows unless the window holds them; stored in the
    checkpoint as that number; predict from the checkpoint rebuilds the same term."""
    import lightning as L
    import numpy as np
    import pandas as pd

    from peephole_lstm import PeepholeLSTMRegressor, SeriesDataModule

    # (season, window, rows, lags): the synthetic series' own season (integer steps: none) -> 3;
    # season 12 -> 25, past the window of 12; 4 -> 9; on 60 rows (42 training rows) season 30 ->
    # 61 is capped at 21, and season 12 -> 25 at max(window, 21) = 24 with the window 24
    for season, window, rows, lags in ((None, 12, None, 3), (12, 12, None, 25), (4, 12, None, 9), (30, 12, 60, 21),
                                       (12, 24, 60, 24)):
        kw = {}
        if rows is not None:
            csv = tmp_path / f"short{rows}.csv"
            pd.DataFrame({"value": np.sin(np.arange(rows) / 3.0)}).to_csv(csv, index=False)
            kw = dict(csv_path=str(csv), val_fraction=0.15, test_fraction=0.15)
        dm = SeriesDataModule(dataset="synthetic", window=window, season=season, batch_size=16, **kw)
        model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, ar_window="auto")
        assert model.net.ar is None  # unknown until the data is
        L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False).fit(model, dm)
        assert model.hparams.ar_window == lags and model.net.ar.in_features == lags
        assert dm.context == max(window, lags) and dm.dataset("train")[0]["x"].shape == (max(window, lags), 1)
        assert model.net.lstm_window == (window if lags > window else 0)
        assert model.ar_lags == [lags]
    # through the CLI (the last case): the checkpoint holds the number; predict rebuilds the term
    cfg = _small(tmp_path)
    cfg["trainer"]["max_epochs"] = 1
    cfg["model"]["ar_window"] = "auto"
    cfg["data"].update(window=12, season=4)
    cfg["forecast"] = {"output_dir": str(tmp_path / "pred")}
    path = _write(cfg, tmp_path / "c.yaml")
    _ok_here(["fit", "--config", path], tmp_path, monkeypatch, capsys)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["ar_window"] == 9 and ckpt["state_dict"]["net.ar.weight"].shape == (1, 9)
    assert PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt").net.ar.in_features == 9
    _ok_here(["predict", "--config", path, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")], tmp_path, monkeypatch,
             capsys)
    with pytest.raises(ValueError, match="ar_window must be a non-negative integer or 'auto'"):
        PeepholeLSTMRegressor(ar_window="seasonal")
