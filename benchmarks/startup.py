"""Start-up: the first forward (and backward) in a new process, ours vs ``nn.LSTM``.

Each measurement is a fresh ``python -c`` process: import, build the layer, one training
forward + backward (the C++ kernel already built and cached, as on every run after the
first). Times are medians over ``--repeat`` processes, in seconds, from the start of the
import of the package (``peephole_lstm`` or nothing beyond torch) to the end of the backward;
torch's own import is measured separately and excluded.

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = """
import time, torch
t0 = time.perf_counter()
{imp}
m = {ctor}(64, 256, 2)
x = torch.randn(35, 20, 64)
out = m(x)[0]
out.sum().backward()
print(time.perf_counter() - t0)
"""

CASES = {
    "nn.LSTM": ("", "torch.nn.LSTM"),
    "PeepholeLSTM": ("from peephole_lstm import PeepholeLSTM", "PeepholeLSTM"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", "import peephole_lstm; peephole_lstm.build_extension()"], env=env,
                   check=True)  # build once, as a first run would
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, (imp, ctor) in CASES.items():
            out = subprocess.run([sys.executable, "-c", CODE.format(imp=imp, ctor=ctor)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            times[name].append(float(out.strip().splitlines()[-1]))
    from speed import cpu_model

    cpu = cpu_model()
    print(f"# {cpu}; import + first training step (35x20x64 -> 256, 2 layers) in a new process, "
          f"median of {args.repeat}")
    print("| layer | seconds | minus nn.LSTM |")
    print("|---|---:|---:|")
    base = statistics.median(times["nn.LSTM"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med - base:+.3f} |")


if __name__ == "__main__":
    main()
