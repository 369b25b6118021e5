"""Generation rows (language models with a KV cache): greedy decoding through a built variant's
`generate(ids, state)`, interleaved with the FP32 baseline's generation; time to first token, ms per token,
token match."""
from __future__ import annotations

import logging
import time

import numpy as np

from quantization.kit.config import RowWriter
from utils.errors import failure_reason
from utils.registry import TOOLCHAINS
from quantization.kit.contract import ModelContext, Route
from quantization.kit.variant import SPEEDUP_CI, common_fields, paired_record, traffic_record

log = logging.getLogger("quantization.kit")

GEN_BATCHES = (1,)  # generation rows: batch 1, what LM latency is quoted at

WARMUP_GEN = 1  # warm-up generations per unit after the first (each is already new_tokens cached steps)


def greedy(generate, prompt: np.ndarray, new_tokens: int, clock=time.perf_counter) -> tuple[np.ndarray, float, list]:
    """Greedy generation with a KV cache through `generate(ids, state)`: (new ids (B, new_tokens), ms to the first
    token (the prompt's prefill and its argmax), ms of each later token (one cached step and its argmax))."""
    b = prompt.shape[0]
    t0 = clock()
    logits, state = generate(prompt, None)
    tok = np.asarray(logits).reshape(b, -1).argmax(-1).astype(np.int64)
    ttft = (clock() - t0) * 1000.0
    out, per = [tok], []
    for _ in range(new_tokens - 1):
        t = clock()
        logits, state = generate(tok[:, None], state)
        tok = np.asarray(logits).reshape(b, -1).argmax(-1).astype(np.int64)
        per.append((clock() - t) * 1000.0)
        out.append(tok)
    return np.stack(out, 1), ttft, per


class GenUnit:
    """One variant's generation as a harness unit: each call generates the whole continuation; the sample is the mean
    time per token after the first (TTFT and the tokens are kept aside)."""

    def __init__(self, generate, prompt: np.ndarray, new_tokens: int):
        self.generate, self.prompt, self.new_tokens = generate, prompt, new_tokens
        self.ttft: list[float] = []
        self.tokens: np.ndarray | None = None

    def timer(self, _fn) -> float:
        toks, ttft, per = greedy(self.generate, self.prompt, self.new_tokens)
        if self.tokens is None:
            self.tokens = toks
        self.ttft.append(ttft)
        return float(np.mean(per)) if per else ttft


def token_match(a: np.ndarray | None, b: np.ndarray | None) -> tuple[float | None, int | None]:
    """(% of positions where two greedy continuations agree, first position where they differ or None)."""
    if a is None or b is None or a.shape != b.shape:
        return None, None
    eq = a == b
    first = int(np.argmin(eq.all(0))) if not eq.all() else None
    return round(float(eq.mean() * 100), 2), first


def time_generation(route: Route, ctx: ModelContext, writer: RowWriter, device: str, gen: list, bases: dict,
                     pair_of: dict) -> list:
    """Decode rows: greedy generation with a KV cache, interleaved with the FP32 baseline's generation, per batch."""
    from utils.harness import Timed, interleaved
    from utils.stats import speedup_ci

    cfg, tc = ctx.cfg, TOOLCHAINS[ctx.cfg.toolchain]
    rows = []
    for v in gen:
        if v.built.generate is None:  # declared to generate (registry `generates`), yet this model has no decoder
            log.warning("%s/%s: no decode row (its build has no generate(): e.g. a model prepared without a KV-cache "
                        "decoder)", cfg.toolchain, v.method)
    gen = [v for v in gen if v.built.generate is not None]
    if not gen or not hasattr(ctx.task, "generation_input"):
        return rows
    for b in GEN_BATCHES:
        t0 = time.time()
        prompt, new = ctx.task.generation_input(b, ctx.manifest, ctx.data)
        units: dict[str, GenUnit] = {v.method: GenUnit(v.built.generate, prompt, new) for v in gen}
        for name, built in bases.items():
            if name not in units and built.generate is not None:
                units[name] = GenUnit(built.generate, prompt, new)
        timed = {n: Timed(lambda: None, b, "decode", None, u.timer) for n, u in units.items()}
        try:
            trials = interleaved(timed, min_trials=cfg.min_iters, budget_s=0.0, warmup=WARMUP_GEN)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - generation failing must not lose the full-sequence rows
            log.warning("generation timing of %s failed: %s", ctx.model, failure_reason(exc))
            for v in gen:
                r = writer.write(writer.row(v.method, v.precision, b, status="failed", latency_kind="decode",
                                            reason=f"generation: {failure_reason(exc)}"))
                rows.append(r)
                v.rows[r.key] = r
            continue
        for v in gen:
            u, lat = units[v.method], trials.latency[v.method]
            base = pair_of.get(v.method)
            fields = dict(common_fields(v), **lat.row_fields(), throughput_unit="tokens/s (decode)",
                          latency_samples=len(lat.samples_ms), ttft_ms=float(np.median(u.ttft[1 + WARMUP_GEN:] or u.ttft)))
            fields["first_call_ms"] = None  # a generation's first call is not one token
            for k in ("value", "top5", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl", "fidelity_vs",
                      "xrt_vs", "xrt_agreement", "xrt_sqnr_db"):
                fields.pop(k, None)  # accuracy and fidelity live in the variant's full-sequence row
            gen_extra = {"prompt_tokens": int(prompt.shape[1]), "new_tokens": int(new), "greedy": True,
                         "ttft_ms_samples": [round(x, 3) for x in u.ttft]}
            if base in units and base != v.method:
                match, first = token_match(units[base].tokens, u.tokens)
                fields.update(token_match=match)
                gen_extra.update(token_match_vs=f"{cfg.toolchain}/{base}", first_divergence=first)
                xb, xo = trials.paired(base, v.method)
                if len(xb) >= 3:
                    spd = speedup_ci(xb, xo, **SPEEDUP_CI)
                    own = base in tc.methods(ctx.model)
                    fields.update(speedup_paired=float(spd[0]), speedup_ci_low=float(spd[1]),
                                  speedup_ci_high=float(spd[2]),
                                  speedup_vs=f"{cfg.toolchain}/{base}" + ("" if own else " (in-process FP32)"))
            elif base is None or base == v.method:
                fields.update(speedup_paired=1.0, speedup_ci_low=1.0, speedup_ci_high=1.0,
                              speedup_vs=f"{cfg.toolchain}/{v.method}")
            latency = lat.summary(trials.trial_of[v.method])
            if base in units and base != v.method:
                latency["baseline"] = paired_record(trials, base, v.method)
            extra = {**v.extra, "latency": latency, "generation": gen_extra,
                     "harness_overhead_ms": round(trials.overhead_ms, 6),
                     "traffic": traffic_record(ctx, v, b, "decode", prompt_tokens=int(prompt.shape[1]), new_tokens=int(new))}
            r = writer.write(writer.row(v.method, v.precision, b, **fields, extra=extra))
            rows.append(r)
            v.rows[r.key] = r
            v.seconds["decode"] = (time.time() - t0) / len(gen)
    return rows
