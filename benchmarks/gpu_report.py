"""GPU step times as fractions of the device's memory bandwidth, beside torch's fused step.

    python -m benchmarks.gpu_report          # needs a CUDA GPU; torch with CUDA optional

Times numbaopt (device="cuda") and torch.optim(fused=True) interleaved, median of
``--repeat`` rounds, float32, and prints one row per optimizer and size: step
time, achieved GB/s over the bytes the update must move, that as a fraction of
the peak bandwidth the device reports (memory clock x bus width x 2), and the
time ratio torch / numbaopt (above 1: numbaopt is faster).
"""

import argparse
import time

import numpy as np

from .test_step_cuda import GPU_SIZES, OPTIMIZERS, _gpu, build_numbaopt, build_torch, torch
from .roofline import bytes_moved


def peak_bandwidth(cuda):
    device = cuda.get_current_device()
    clock_hz = device.MEMORY_CLOCK_RATE * 1e3
    return 2 * clock_hz * device.GLOBAL_MEMORY_BUS_WIDTH / 8, device.name


def median_time(step, rounds, inner):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cuda = _gpu()
    if cuda is None:
        raise SystemExit("no CUDA GPU here")
    peak, name = peak_bandwidth(cuda)
    with_torch = torch is not None and torch.cuda.is_available()
    print(f"{name}: peak memory bandwidth {peak / 1e9:.0f} GB/s (reported by the device)")
    print(f"{'optimizer':<14}{'size':>12}{'numbaopt ms':>13}{'GB/s':>8}{'% peak':>8}"
          f"{'torch fused ms':>16}{'torch/numbaopt':>16}")
    for opt_name in OPTIMIZERS:
        for numel, tensors in GPU_SIZES:
            ours = build_numbaopt(opt_name, numel, tensors)
            theirs = build_torch(opt_name, numel, tensors) if with_torch else None
            inner = max(1, int(2e8 // max(numel, 1)))
            t_ours, t_theirs = [], []
            for _ in range(args.repeat):     # interleaved, so drift hits both alike
                t_ours.append(median_time(ours, 1, inner))
                if theirs is not None:
                    t_theirs.append(median_time(theirs, 1, inner))
            t = float(np.median(t_ours))
            gbs = bytes_moved(OPTIMIZERS[opt_name][2], numel, 4) / t / 1e9
            row = (f"{opt_name:<14}{f'{numel // 1000}k/{tensors}':>12}{t * 1e3:>13.3f}"
                   f"{gbs:>8.0f}{100 * gbs * 1e9 / peak:>7.0f}%")
            if t_theirs:
                tt = float(np.median(t_theirs))
                row += f"{tt * 1e3:>16.3f}{tt / t:>16.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
