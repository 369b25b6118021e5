"""What every launcher shares: running a plan's routes, marking what a stopped route left unfinished, estimates.

Stdlib only. The local bench, the sweeps and the GPU check run a plan's routes through `run_routes`; the Ray driver
(`evaluation.launch.cluster`) runs each route as a task and uses the same `status_items` / `mark_unfinished` for what its
tasks did not finish. A route process gets its part of the plan as a file and runs exactly those items
(`python -m quantization.kit <toolchain> --plan FILE`); each item it finishes leaves a record
(`<runs_dir>/items/<item id>.json`), so a route that dies is answered item by item: the items it finished keep
their rows, the planned ones it did not finish get `failed` rows (never replacing an ok row of the same key: those
go beside it, as the latest attempt), and nothing that was not planned gets a row.
"""
from __future__ import annotations

import fcntl
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from evaluation.launch import envs
from utils.errors import SuiteError
from utils.paths import PUBLISHED_RUNS_DIR
from utils.plan import (Estimates, Item, Plan, finished_items, fit_budget, read_item_records, with_estimates,
                        write_item_record)
from utils.registry import TOOLCHAINS, model_decl
from utils.rows import ResultRow, read_row, status_rows, write_row


def say(msg: str, who: str = "bench") -> None:
    print(f"[{who} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ rows of items the launcher writes

def _dataset(model: str, weights: str, data: str | None) -> str:
    return model_decl(model).dataset(weights) or str(data)


def status_items(plan: Plan, items, status: str, reason: str, *, run_id: str, launcher: str = "local",
                 env_extra: dict | None = None, keys: set[str] | None = None) -> list[ResultRow]:
    """`skipped`/`failed` rows for plan items the launcher answers itself (environment missing, model not prepared,
    route died), and their records. `keys`: only these row keys (the rest of an item is already written)."""
    env = {"run_id": run_id, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "launcher": launcher,
           "host": platform.node(), **(env_extra or {})}
    from utils.envinfo import git_commit

    commit = git_commit()
    out = []
    for it in items:
        rows = status_rows(status=status, reason=reason, model=it.model, weights=it.weights,
                           dataset=_dataset(it.model, it.weights, plan.settings.data), toolchain=it.toolchain,
                           variants=[it.variant], device=it.device, batches=it.batches, metric=model_decl(it.model).metric,
                           eval_limit=it.eval_limit, environment=env, repeat=it.repeat)
        if it.decode:
            rows.append(rows[0].replace(batch=1, latency_kind="decode") if rows else None)
        rows = [r for r in rows if r is not None and (keys is None or r.key in keys)]
        for r in rows:
            write_row(r, plan.runs_dir)
        out += rows
        write_item_record(plan.runs_dir, {"item": it.to_dict(), "status": status, "reason": reason,
                                          "rows": [r.key for r in rows], "run_id": run_id, "git_commit": commit,
                                          "config_key": plan.config_key(it), "seconds": {"total": 0.0}})
    return out


def unfinished(plan: Plan, items, run_id: str) -> list[Item]:
    """The items without a record from this run (their route process stopped before it finished them)."""
    recs = read_item_records(plan.runs_dir)
    return [it for it in items if (recs.get(it.ident) or {}).get("run_id") != run_id]


def mark_unfinished(plan: Plan, items, reason: str, *, run_id: str, launcher: str = "local",
                    env_extra: dict | None = None) -> list[Item]:
    """`failed` rows for the planned items a stopped route did not finish: only at the row keys that have no
    finished row from this run (a batch timed before the stop keeps its row; a scored row still pending its timing
    stays, with this failure beside it as its latest attempt). An item whose every row is finished by this run (the
    route stopped before it wrote the item's record) is recorded ok, not failed. Returns the items marked failed."""
    from utils.envinfo import git_commit

    marked = []
    for it in unfinished(plan, items, run_id):
        todo = set()
        for k in it.row_keys():
            r = read_row(Path(plan.runs_dir) / f"{k}.json")
            if r is None or not r.complete or (r.environment or {}).get("run_id") != run_id:
                todo.add(k)
        if not todo:
            write_item_record(plan.runs_dir, {"item": it.to_dict(), "status": "ok", "rows": it.row_keys(),
                                              "reason": "every row finished before the route stopped (recorded by "
                                                        "the launcher)", "run_id": run_id, "git_commit": git_commit(),
                                              "config_key": plan.config_key(it), "seconds": {}})
            continue
        status_items(plan, [it], "failed", reason, run_id=run_id, launcher=launcher, env_extra=env_extra, keys=todo)
        marked.append(it)
    return marked


def left_out_items(plan: Plan, items, why: str, *, run_id: str) -> None:
    """Records (no rows) for items a launcher did not start: the budget ran out. They are said in the summary."""
    from utils.envinfo import git_commit

    for it in items:
        write_item_record(plan.runs_dir, {"item": it.to_dict(), "status": "left-out", "reason": why, "rows": [],
                                          "run_id": run_id, "git_commit": git_commit(),
                                          "config_key": plan.config_key(it), "seconds": {}})
        plan.left_out.append({"item": it.ident, "why": why})


# ------------------------------------------------------------------------------ route processes

class PeakRss:
    """Resident-memory high-water mark of a child process (Linux /proc VmHWM), sampled while it runs."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb = pid, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._stop.is_set():
            try:
                for line in open(path):
                    if line.startswith("VmHWM:"):
                        self.peak_mb = int(line.split()[1]) / 1024
            except (OSError, ValueError, IndexError):
                pass
            self._stop.wait(0.5)

    def stop(self) -> float | None:
        self._stop.set()
        self._t.join(timeout=2)
        return self.peak_mb


def died_reason(rc: int, peak_mb: float | None) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"route process killed by {name}"
        if -rc == signal.SIGKILL:
            why += " (the out-of-memory killer, or a kill -9)"
    else:
        why = f"route process exited {rc} before finishing this variant"
    return why + (f"; peak resident memory {peak_mb:.0f} MB" if peak_mb else "")


def plan_file(plan: Plan, toolchain: str, model: str) -> Path:
    """The route's part of the plan, saved where its rows go (`<runs_dir>/plans/`), for the route process."""
    return plan.subset(plan.items_of(toolchain, model)).save(
        Path(plan.runs_dir) / "plans" / f"{plan.run_id}__{toolchain}__{model}.json")


def run_route(env: str, toolchain: str, path: Path, extra_env: dict | None = None, **kw) -> tuple[int, float | None]:
    """One route process on a plan file; (return code, its peak resident memory in MB where known)."""
    proc = envs.popen_in_env(env, ["-m", "quantization.kit", toolchain, "--plan", str(path)], extra_env=extra_env, **kw)
    mon = PeakRss(proc.pid)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        envs.interrupt(proc)
        raise
    finally:
        peak = mon.stop()
    return rc, peak


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    bad_input: bool = False


def run_routes(plan: Plan, prepared: dict, ensure, outcome: Outcome, *, who: str = "bench",
               est: Estimates | None = None) -> None:
    """Every route of the plan in its environment, in the run order: an environment that cannot be created or a
    model not prepared gives its items' rows with the reason; a route that stops before its items finished gives
    failed rows for those items only; with a deadline, a route whose items no longer fit is not started (its items
    are left out, said in the summary, no rows)."""
    for tc_name, model in plan.routes():
        tc = TOOLCHAINS[tc_name]
        items = plan.items_of(tc_name, model)
        if prepared.get(model) != "ok":
            status_items(plan, items, "failed", prepared.get(model, "model not prepared"), run_id=plan.run_id)
            continue
        if plan.deadline is not None and est is not None:
            first = est.route_open(tc_name, model, plan.settings.weights)
            fit = [it for it in items
                   if time.time() + first + (it.est_build_s or 0) + (it.est_time_s or 0) <= plan.deadline]
            if not fit:
                why = f"budget: {max(0, plan.deadline - time.time()):.0f} s left, not enough to start {tc_name}/{model}"
                left_out_items(plan, items, why, run_id=plan.run_id)
                say(f"{tc_name}/{model}: left out ({why})", who)
                continue
        try:
            ensure(tc.env.name)
        except envs.EnvError as exc:
            say(f"{tc_name}: environment unavailable: {exc}", who)
            status_items(plan, items, "skipped", f"environment could not be created: {exc}", run_id=plan.run_id)
            continue
        say(f"{tc_name}: {model} ({len(items)} item(s))", who)
        t0 = time.time()
        path = plan_file(plan, tc_name, model)
        try:
            rc, peak = run_route(tc.env.name, tc_name, path)
        finally:
            path.unlink(missing_ok=True)  # the item records say what it ran
            try:
                path.parent.rmdir()  # only when no other plan file is there
            except OSError:
                pass
        if rc == 2:
            outcome.bad_input = True  # bad input (already reported in one line)
            return
        left = mark_unfinished(plan, items, died_reason(rc, peak), run_id=plan.run_id) if rc != 0 else \
            unfinished(plan, items, plan.run_id)
        if rc != 0:
            why = died_reason(rc, peak)
            outcome.failures.append(f"{tc_name}/{model}: {why} ({len(left)} item(s) unfinished -> failed rows)")
            say(outcome.failures[-1], who)
        elif left:  # exit 0 yet items without a record: the route broke its contract
            mark_unfinished(plan, left, "route process ended without finishing this item", run_id=plan.run_id)
            outcome.failures.append(f"{tc_name}/{model}: {len(left)} item(s) not finished although the route exited 0")
        else:
            say(f"{tc_name}: {model} done in {time.time() - t0:.0f} s", who)


def run_plan(plan: Plan, *, who: str, prepared: dict | None = None) -> Outcome:
    """A plan whose models are already prepared, route by route in their environments (the sweeps): a fresh run id,
    one run per runs folder, the same handling of stopped routes as the bench."""
    from utils.plan import new_run_id

    plan.run_id = new_run_id()
    os.environ["SUITE_RUN_ID"] = plan.run_id
    outcome = Outcome()
    with RunLock(plan.runs_dir):
        run_routes(plan, prepared or {m: "ok" for m in plan.models()}, envs.ensure_env, outcome, who=who)
    failed, _ = item_summary(plan, plan.run_id)
    if failed:
        outcome.failures.append(f"{len(failed)} item(s) failed: {', '.join(failed[:8])}")
    return outcome


def item_summary(plan: Plan, run_id: str) -> tuple[list[str], list[str]]:
    """(items that failed in this run, items left out with why) from the records."""
    recs = read_item_records(plan.runs_dir)
    failed, left = [], []
    for it in plan.items:
        rec = recs.get(it.ident) or {}
        if rec.get("run_id") != run_id:
            continue
        if rec.get("status") == "failed":
            failed.append(f"{it.toolchain}/{it.model}/{it.method} ({it.device})")
        elif rec.get("status") in ("left-out", "partial"):
            left.append(f"{it.toolchain}/{it.model}/{it.method} ({it.device}): {rec.get('reason')}")
    left += [f"{x['item']}: {x['why']}" for x in plan.left_out if not any(x['item'] in s for s in left)]
    return failed, left


# ------------------------------------------------------------------------------ estimates, resume, budget

PREPARE_DEFAULT_S = 120.0  # a model whose declaration names no preparation time for its weights
PREPARED_S = 8.0  # a prepared model: its manifest and hashes verified
ENV_DEFAULT_S = 90.0  # an environment not created yet (pip installs from the registry)
CEILINGS_S = 45.0
CUDA_CEILINGS_S = 15.0  # a cuda-only run: the GPU's ceilings alone (torch import + ~10 s of matmuls)
REPORT_S = 20.0


def estimates(runs_dir: Path | str) -> Estimates:
    """Seconds per item from this runs folder's records and the published reference's."""
    return Estimates.from_dirs(dict.fromkeys([Path(runs_dir), PUBLISHED_RUNS_DIR]))


def fixed_seconds(plan: Plan, env_names: list[str], *, ceilings: bool, report: bool) -> tuple[float, list[str]]:
    """What a run costs besides its items: model preparation and environment creation (overlapping), ceilings, the
    report; with the lines saying where each number comes from."""
    from utils.specs import ModelSource

    s = plan.settings
    prep, lines = 0.0, []
    for m in plan.models():
        src = ModelSource(m, s.weights, s.weights_path, s.data)
        if src.manifest_path.is_file():
            prep += PREPARED_S
        else:
            secs = model_decl(m).prepare_seconds.get(s.weights, PREPARE_DEFAULT_S)
            prep += secs
            lines.append(f"  {m} ({s.weights}): not prepared yet, ~{secs:.0f} s")
    todo = [n for n in env_names if n not in envs.OVERRIDES and not envs.is_ready(n)]
    env_s = ENV_DEFAULT_S * len(todo) / 2  # two at once, in the background while the models are prepared
    if todo:
        lines.append(f"  environments to create: {', '.join(todo)} (~{env_s:.0f} s, beside the preparation)")
    ceil_s = (CEILINGS_S if any(it.device == "cpu" for it in plan.items) or not plan.items else CUDA_CEILINGS_S) \
        if ceilings else 0.0
    total = max(prep, env_s) + ceil_s + (REPORT_S if report else 0.0)
    lines.insert(0, f"fixed: ~{total:.0f} s (preparation {prep:.0f} s, environments {env_s:.0f} s"
                    f"{', ceilings %.0f s' % ceil_s if ceilings else ''}{', report %.0f s' % REPORT_S if report else ''})")
    return total, lines


def narrow(plan: Plan, *, resume: bool, budget: float | None, fixed_s: float, device_missing: str | None,
           est: Estimates) -> Plan:
    """--resume leaves out the finished items; --budget keeps the items that fit in value order. Estimates are put
    on every item (the kit's deadline checks use them)."""
    if resume:
        from utils.envinfo import git_commit

        done, scored = finished_items(plan, plan.runs_dir, git_commit())
        kept = [replace(it, scores_from=it.row_key(it.batches[0]) if it.ident in scored else it.scores_from)
                for it in plan.items if it.ident not in done]
        plan = plan.subset(kept)
        plan.left_out += [{"item": k, "why": f"resume: {why}"} for k, why in done.items()]
    if budget is not None:
        lo = list(plan.left_out)
        plan, out = fit_budget(plan, budget, fixed_s, est, device_missing)
        plan.left_out = lo + out
    return with_estimates(plan, est, device_missing)


def driver_missing() -> str | None:
    """Why no CUDA work can run here (no NVIDIA driver library), or None."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded): no CUDA GPU to run on"
    return None


# ------------------------------------------------------------------------------ one run per folder

class RunLock:
    """One run per runs folder: an exclusive lock on `<runs_dir>/.lock` (flock: the kernel drops it when the holder
    dies, so a crashed run never leaves it behind). A second run refuses with one line naming the holder."""

    def __init__(self, runs_dir: Path | str):
        self.path = Path(runs_dir) / ".lock"
        self.fh = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise SuiteError(f"another run is writing to {self.path.parent} ({holder}); wait for it to finish or pass "
                             "another --runs-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            try:
                self.fh.truncate(0)
                fcntl.flock(self.fh, fcntl.LOCK_UN)
            finally:
                self.fh.close()
                self.fh = None
