"""Print clips/s of the backbones' forward (fbank + encoder) with and without SDPA attention.

Batch of 8 random 10 s clips under torch.inference_mode; on CUDA under bf16 autocast. Backbones
are random-init (speed does not depend on the weights). Prints numbers, asserts nothing.
Usage: python benchmarks/backbone_speed.py [--sizes tiny base] [--devices cpu cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from asdtool.models.backbones.registry import load_backbone


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clips_per_second(name: str, size: str, device: str, sdpa: bool, batch: int, seconds: float,
                     repeats: int, warmup: int) -> float:  # fmt: skip
    """Return the clips/s of `forward` on a batch of random `seconds`-long clips (median of `repeats`)."""
    model = load_backbone(name, size=size).to(device).eval()
    model.set_sdpa(sdpa)
    wave = 0.1 * torch.randn(batch, int(16000 * seconds), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(wave)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["beats", "eat"], choices=["beats", "eat"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    header = f"{'backbone':<8} {'size':<5} {'device':<7} {'SDPA clips/s':>13} {'math clips/s':>13} {'speed-up':>9}"
    print(f"batch {args.batch} x {args.seconds:g} s clips, median of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()} (bf16 autocast)"
                                                     if "cuda" in devices else ""))  # fmt: skip
    print(header)
    print("-" * len(header))
    for device in devices:
        for size in args.sizes:
            for name in args.backbones:
                fused, plain = (clips_per_second(name, size, device, sdpa, args.batch, args.seconds,
                                                 args.repeats, args.warmup) for sdpa in (True, False))  # fmt: skip
                print(f"{name:<8} {size:<5} {device:<7} {fused:>13.2f} {plain:>13.2f} {fused / plain:>8.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()
