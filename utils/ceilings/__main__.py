"""python -m utils.ceilings: measure this environment's ceilings (the bench runs it in the model-preparing environment,
then with --merge in every other environment whose toolchain declares ceilings)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.ceilings import (cuda_summary, declaring, measure, measure_cuda, measure_memory, memory_summary, merge,
                            merge_memory, summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.ceilings", description="measure matmul ceilings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--out", type=Path, help="write the record here (atomic JSON)")
    ap.add_argument("--merge", action="store_true", help="merge with the record already at --out (another env's)")
    ap.add_argument("--devices", default="auto",
                    help="cpu, cuda or cpu,cuda: whose ceilings to measure (auto: the CPU, and the GPU when a declared "
                         "library sees one; named cuda without one records why)")
    ap.add_argument("--toolchains", default=None,
                    help=f"comma list: whose declared libraries run besides NumPy's (default: all of "
                         f"{', '.join(declaring())}; what cannot run here is recorded as unavailable)")
    ap.add_argument("--cuda-budget", type=float, default=10.0, help="seconds for the GPU's ceilings")
    ap.add_argument("--memory-budget", type=float, default=6.0,
                    help="seconds for the memory-bandwidth kernels (0: not measured)")
    args = ap.parse_args(argv)
    devs = {d.strip() for d in args.devices.split(",") if d.strip()}
    bad = devs - {"auto", "cpu", "cuda"}
    if bad or not devs:
        ap.error(f"--devices: unknown {', '.join(sorted(bad)) or 'empty list'}; valid: cpu, cuda, auto")
    tcs = None
    if args.toolchains is not None:
        tcs = tuple(t.strip() for t in args.toolchains.split(",") if t.strip())
        unknown = [t for t in tcs if t not in declaring()]
        if unknown:
            ap.error(f"--toolchains: {', '.join(unknown)} declares no ceilings; valid: {', '.join(declaring())}")
    r = measure(args.threads, args.budget, toolchains=tcs) if devs & {"auto", "cpu"} else {}
    if r and args.memory_budget > 0:
        r.update(measure_memory(args.threads, args.memory_budget, toolchains=tcs))
    if devs & {"auto", "cuda"}:
        gpu = measure_cuda(args.cuda_budget, toolchains=tcs)
        if gpu["available"] or "cuda" in devs:
            r["cuda"] = gpu
    if args.out and args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        r = {**merge(old, r), **merge_memory(old, r)}
    if args.out:
        from utils.atomic import atomic_write_json

        atomic_write_json(args.out, r)
    if r.get("libraries") is not None:
        print(summary(r))
    if r.get("memory"):
        print(memory_summary(r))
    if r.get("cuda"):
        print(cuda_summary(r["cuda"]))
    print(json.dumps({k: v for k, v in r.items() if k not in ("libraries", "cuda", "memory")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
