"""Did the OpenVINO CPU plugin's dynamic quantization run? The on/off experiment behind the weight-only rows' compute
precision, on any model the route builds.

    python -m quantization.openvino.dq --model gpt2 --weights random --methods fp32,int8,int8-wo,int4-wo \
        --repeats 3 --out results/openvino_dq_gpt2_random.csv

Each method's artifact (the FP32 ONNX, or the cached NNCF IR the route makes) is compiled twice per repeat, with
DYNAMIC_QUANTIZATION_GROUP_SIZE=0 and with the plugin's own value (the bench's setting), one compiled copy at a
time, in alternating order; each copy gets a warm-up inference, its FullyConnected record from the runtime model
(runtimePrecision and kernel name per layer) and timed inferences of the route's batch-1 latency input (wall clock
and process CPU time; the ratios the rule reads are CPU time, which other load stretches far less). Per method
the pooled timings go through `ov.dq_account`, the rule the route applies to its rows. The FP32 and static INT8
IRs are the controls: their weights are not compressed, so the setting has nothing to act on. One CSV line per
(method, repeat) plus a `pooled` line per method; achieved GOP/s = the manifest's ops per item x items per call /
time, to compare with the device's FP32 and INT8 matmul ceilings. Other flags go to the route (`--calib-samples`,
`--group-size`, ...), which makes or reuses the artifacts exactly as the bench does.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

from quantization.kit import build_variant
from quantization.openvino import ov as ov_calls
from utils.atomic import atomic_write_text
from utils.cli import ArgParser
from utils.errors import SuiteError, cli_main, setup_logging

log = logging.getLogger("quantization.openvino.dq")
FIELDS = ["model", "weights", "method", "repeat", "order", "group_size", "off_min_ms", "off_median_ms", "on_min_ms",
          "on_median_ms", "off_cpu_min_ms", "on_cpu_min_ms", "off_over_on_min", "off_over_on_median",
          "wall_off_over_on_min", "wall_off_over_on_median", "off_gops", "on_gops", "fc_layers",
          "weight_compressed_layers", "fc_runtime_precision", "fc_kernels_on", "fc_kernels_off", "kernel_names_differ",
          "active", "calls"]


def experiment(model: str, weights: str, methods: list[str], repeats: int = 3, threads: int = 2,
               budget_s: float = 1.0, argv: list[str] | None = None) -> list[dict]:
    """The on/off timing of every method's artifact (see the module docstring); one dict per CSV line."""
    lines = []
    for method in methods:
        ctx, built = build_variant("openvino", model, method,
                                   argv=["--weights", weights, "--threads", str(threads), "--no-dq-probe", *(argv or [])])
        artifact = built.artifact
        li = ctx.task.latency_input(1, ctx.manifest, ctx.data)
        ops = float(ctx.manifest.get("ops_per_item") or 0.0) * li.items
        del built  # its compiled model: one compiled copy at a time from here on
        model_ir = ov_calls.load_model(artifact) if Path(artifact).suffix == ".xml" else ov_calls.read_onnx(artifact)
        runs = {"off": [], "on": []}
        for rep in range(repeats):
            order = ("off", "on") if rep % 2 == 0 else ("on", "off")
            one = {}
            for which in order:
                compiled, _ = ov_calls.compile_cpu(model_ir, threads, latency=True, inference_precision="f32",
                                                   dynamic_quantization_group_size=0 if which == "off" else None)
                one[which] = ov_calls.timed_run(compiled, li.x, budget_s=budget_s)
                del compiled
                runs[which].append(one[which])
            lines.append(_line(model, weights, method, str(rep + 1), "-".join(order), one["off"], one["on"], ops))
        pooled = {w: _pool(rs) for w, rs in runs.items()}
        lines.append(_line(model, weights, method, "pooled", "", pooled["off"], pooled["on"], ops))
    return lines


def _pool(records: list[dict]) -> dict:
    import numpy as np

    ms = [v for r in records for v in r["ms"]]
    cpu = [v for r in records for v in r["cpu_ms"]]
    return {**records[0], "ms": ms, "min_ms": min(ms), "median_ms": float(np.median(ms)), "cpu_ms": cpu,
            "cpu_min_ms": min(cpu), "cpu_median_ms": float(np.median(cpu)), "calls": len(ms)}


def _line(model, weights, method, rep, order, off, on, ops) -> dict:
    acc = ov_calls.dq_account(off, on)
    return {"model": model, "weights": weights, "method": method, "repeat": rep, "order": order,
            "group_size": acc["group_size"], "off_min_ms": off["min_ms"], "off_median_ms": round(off["median_ms"], 4),
            "on_min_ms": on["min_ms"], "on_median_ms": round(on["median_ms"], 4),
            "off_cpu_min_ms": off["cpu_min_ms"], "on_cpu_min_ms": on["cpu_min_ms"],
            "off_over_on_min": acc["off_over_on_min"], "off_over_on_median": acc["off_over_on_median"],
            "wall_off_over_on_min": acc["wall_off_over_on_min"],
            "wall_off_over_on_median": acc["wall_off_over_on_median"],
            "off_gops": round(ops / off["median_ms"] / 1e6, 1) if ops else None,
            "on_gops": round(ops / on["median_ms"] / 1e6, 1) if ops else None, "fc_layers": on["fc"]["layers"],
            "weight_compressed_layers": acc["weight_compressed_layers"],
            "fc_runtime_precision": json.dumps(acc["fc_runtime_precision"], sort_keys=True),
            "fc_kernels_on": json.dumps(acc["fc_kernels_on"], sort_keys=True),
            "fc_kernels_off": json.dumps(acc["fc_kernels_off"], sort_keys=True),
            "kernel_names_differ": acc["kernel_names_differ"], "active": acc["active"],
            "calls": f"{off['calls']}/{on['calls']}"}


def to_csv(lines: list[dict]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(lines)
    return buf.getvalue()


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m quantization.openvino.dq", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--weights", default="random", choices=("embedded", "random", "pretrained"))
    ap.add_argument("--methods", default="fp32,int8,int8-wo,int4-wo")
    ap.add_argument("--repeats", type=int, default=3, help="on/off pairs per method (alternating order)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per compiled copy (>= 5 calls)")
    ap.add_argument("--out", type=Path, default=None, help="write the CSV here (else print it)")
    args, route_args = ap.parse_known_args(argv)  # the rest are route flags (--calib-samples, --group-size, ...)
    setup_logging()
    if args.repeats < 1:
        raise SuiteError("--repeats must be >= 1")
    lines = experiment(args.model, args.weights, [m for m in args.methods.split(",") if m], args.repeats,
                       args.threads, args.budget, route_args)
    text = to_csv(lines)
    if args.out:
        atomic_write_text(args.out, text)
        log.info("%d lines -> %s", len(lines), args.out)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
