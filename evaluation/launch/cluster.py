"""The bench on a Ray cluster: every (toolchain, model, weights) route becomes a Ray task on a node with a bench slot.

    python3 -m evaluation.bench --cluster local --models resnet50 --toolchains torch --methods eager,fx
    python3 -m evaluation.bench --cluster ray://head:10001 ...        (re-launched here, in the `ray` environment)

Driver (this process, the `ray` environment; docs/scale-out.md):
  1. the bench's own checks, then `models.prepare` on the driver (torch environment) exactly as the local bench;
  2. each prepared model folder (manifest, FP32 files; not route artifacts) is put once in Ray's object store and
     unpacked on each node into its node-local model cache (kept per node, keyed by content digest); the manifests
     store paths relative to their folder, so SUITE_CACHE_DIR=<node cache> points the routes at the copy;
  3. the code reaches the nodes as Ray's runtime_env `working_dir` (this working tree, without .git, .venvs,
     models/cache, results); rows record the driver's commit (SUITE_GIT_COMMIT);
  4. each task asks for one bench slot ({"bench_slot": 1}, offered by a node when it joins) and `num_gpus=1` when
     the toolchain's declared devices are cuda-only, so two timing jobs never share a machine; a route needing what
     no alive node offers gets `skipped` rows and is never submitted;
  5. a route that needs another toolchain of the run (declaration `needs`) waits for it and receives the artifacts
     it made (the `<model folder>/<toolchain>/` files of that node), through the object store;
  6. rows come back as JSON and are written here, atomically, by utils.rows.write_row: each finished item as soon as
     its record exists (through a RowSink actor on the head node), all of them again with the task's result; a route
     whose process died or whose node/worker died is tried again with its unfinished items (--retries, on another
     suitable node where there is one), then those get `failed` rows with the reason;
  7. Ctrl-C cancels every task (ray.cancel, force: the worker and its route process die) and writes nothing more;
  8. the tables, as the bench makes them.

Task (a node's `ray` environment, the shipped working tree as its working directory): creates or reuses the
toolchain's environment from requirements/ with evaluation.launch.envs (in SUITE_VENVS_DIR of the node, default
~/.cache/ptq-suite/venvs), unpacks the model, measures the node's ceilings once per run (when the node has the
model-preparing environment), runs `python -m quantization.kit <toolchain>` with SUITE_LAUNCHER=ray into a
node-local temporary runs folder and returns the rows, each with `environment.cluster` = node, host, attempt and
the task's start/end times.

Test hook, honoured only by this task wrapper: SUITE_CLUSTER_TEST_CRASH="<toolchain>/<model>:<n>" kills the route
process (SIGKILL) of that route's attempts 1..n once its first timed row is written (tests/cluster).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.launch import bench, envs, run
from evaluation.launch.routes import (Outcome, PeakRss, RunLock, died_reason, mark_unfinished, say as _say, status_items,
                               unfinished)
from utils.errors import SuiteError, cli_main, failure_reason
from utils.paths import REPO_ROOT
from utils.plan import Plan, new_run_id, read_item_records, write_item_record
from models.catalog import MODELS_ENV
from utils.registry import PREPARE_TOOLCHAIN, TOOLCHAINS
from utils.rows import ResultRow, write_row

BENCH_SLOT = "bench_slot"  # custom resource: one per machine that may run timing jobs (`ray start --resources`)
CRASH_HOOK = "SUITE_CLUSTER_TEST_CRASH"
EXCLUDES = [".git", ".venvs", "models/cache", "results", "**/__pycache__", "*.tmp", ".pytest_cache"]
NODE_HOME = Path.home() / ".cache" / "ptq-suite"


def say(msg: str) -> None:
    _say(msg, "cluster")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def needs_gpu(toolchain: str) -> bool:
    """A toolchain whose declared devices are all cuda runs only on a node with a GPU."""
    return set(TOOLCHAINS[toolchain].devices) == {"cuda"}


# ------------------------------------------------------------------------------ shipping folders

def pack_folder(folder: Path, skip_dirs=(), name: str | None = None) -> dict:
    """Every file of `folder` (but top-level subfolders named in skip_dirs): {"folder", "digest", "files"}, where
    files maps a relative path to (mtime_ns, mode, bytes), so the copy keeps the recorded size and mtime."""
    files, h = {}, hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or p.name.endswith(".tmp") or (len(rel.parts) > 1 and rel.parts[0] in skip_dirs):
            continue
        st, data = p.stat(), p.read_bytes()
        files[rel.as_posix()] = (st.st_mtime_ns, st.st_mode & 0o777, data)
        h.update(rel.as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    return {"folder": name or folder.name, "digest": h.hexdigest()[:16], "files": files}


def unpack(pack: dict, dest: Path) -> bool:
    """Write the pack's files into dest (each atomically, with its mtime); skipped when dest already holds this
    digest. Returns whether anything was written. Other files in dest (route artifacts of earlier runs) stay."""
    from utils.atomic import atomic_write_bytes, atomic_write_text

    marker = dest / f".shipped-{pack['digest']}"
    if marker.exists():
        return False
    for rel, (mtime_ns, mode, data) in pack["files"].items():
        p = dest / rel
        try:
            st = p.stat()
            if st.st_size == len(data) and st.st_mtime_ns == mtime_ns:
                continue
        except OSError:
            pass
        atomic_write_bytes(p, data)
        os.chmod(p, mode)
        os.utime(p, ns=(mtime_ns, mtime_ns))
    atomic_write_text(marker, _now() + "\n")
    return True


# ------------------------------------------------------------------------------ the task (runs on a node)

def _die_with_parent() -> None:
    """preexec_fn: the route process gets SIGKILL when the worker that started it dies (a forced ray.cancel)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _crash_hook(toolchain: str, model: str, attempt: int) -> bool:
    hook = os.environ.get(CRASH_HOOK, "")
    target, _, n = hook.rpartition(":")
    return bool(hook) and target == f"{toolchain}/{model}" and attempt <= int(n or 0)


def _node_ceilings(spec: dict, run_tmp: Path) -> Path:
    """This node's device file for the run: measured once per run in the model-preparing environment when the node
    has it (a few seconds, inside the bench slot), else absent (the rows then carry no ceilings, never another
    machine's)."""
    dev = run_tmp / "device.json"
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    if spec.get("ceilings") and not dev.exists() and envs.is_ready(prep_env):
        code = f"from utils.ceilings import measure_and_store; measure_and_store({int(spec['threads'])})"
        envs.run_in_env(prep_env, ["-c", code], extra_env={"SUITE_DEVICE_FILE": dev, "OMP_NUM_THREADS": None},
                        capture_output=True, timeout=300)
    return dev


class Streamer:
    """Sends each item the route finishes (its record and rows) to the driver's sink actor as soon as its record is
    written, so that a node lost later in the route keeps them. Without a sink, or once the sink cannot be reached,
    it sends nothing (the task's result still carries every row)."""

    def __init__(self, sink, name: str, folder: Path, cluster: dict):
        self.sink, self.name, self.folder, self.cluster = sink, name, folder, cluster
        self.sent: set[str] = set()

    def poll(self) -> int:
        if self.sink is None:
            return 0
        rows, records = [], []
        for p in sorted((self.folder / "items").glob("*.json")):
            if p.name in self.sent:
                continue
            try:
                rec = json.loads(p.read_text())
                item_rows = [json.loads((self.folder / f"{k}.json").read_text()) for k in rec.get("rows") or []]
            except (OSError, ValueError):
                continue  # written atomically: a row listed but gone is a bug elsewhere; the result carries it
            self.sent.add(p.name)
            records.append(rec)
            rows += item_rows
        if not records:
            return 0
        for r in rows:
            r.setdefault("environment", {})["cluster"] = dict(self.cluster)
        import ray

        try:
            ray.get(self.sink.put.remote(self.name, rows, records), timeout=60)
        except Exception:  # noqa: BLE001 - the driver's sink is gone: the result still carries every row
            self.sink = None
            return 0
        return len(records)


def route_task(spec: dict, model_pack: dict, sink, *dep_packs):
    """One route on this node. Returns (result, artifacts): result = {"rows": [...], "rc", "peak_mb", "host",
    "node_id", "attempt", "task_start", "task_end"} (or "env_error"); artifacts = this toolchain's files of the model
    folder when a later route of the run needs them, else None. While the route runs, each finished item goes to the
    driver's `sink` (RowSink actor, or None) at once: a lost node then costs only the items it had not finished."""
    t_start = time.time()
    import ray

    toolchain, model = spec["toolchain"], spec["model"]
    info = {"host": platform.node(), "node_id": ray.get_runtime_context().get_node_id(), "attempt": spec["attempt"],
            "task_start": t_start}
    os.environ["SUITE_VENVS_DIR"] = os.environ.get("SUITE_VENVS_DIR") or str(NODE_HOME / "venvs")
    node_cache = Path(os.environ.get("SUITE_NODE_CACHE_DIR") or NODE_HOME / "models")
    env_name = TOOLCHAINS[toolchain].env.name
    try:
        envs.ensure_env(env_name)
    except envs.EnvError as exc:
        return {**info, "env_error": str(exc), "task_end": time.time()}, None
    model_dir = node_cache / model_pack["folder"]
    unpack(model_pack, model_dir)
    for dp in dep_packs:
        if dp:
            unpack(dp, model_dir / dp["folder"])
    run_tmp = Path(tempfile.gettempdir()) / f"ptq-suite-{spec['run_id']}"  # this run's node ceilings
    for old in Path(tempfile.gettempdir()).glob("ptq-suite-*-ray"):  # earlier runs' (a day old)
        try:
            if old != run_tmp and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    run_tmp.mkdir(parents=True, exist_ok=True)
    device_file = _node_ceilings(spec, run_tmp)
    with tempfile.TemporaryDirectory(prefix="rows-", dir=run_tmp) as tmp:
        plan = Plan.from_dict({**spec["plan"], "runs_dir": tmp})
        path = plan.save(Path(tmp) / "plans" / f"{toolchain}__{model}.json")
        argv = ["-m", "quantization.kit", toolchain, "--plan", str(path)]
        extra = {"SUITE_CACHE_DIR": node_cache, "SUITE_LAUNCHER": "ray", "SUITE_RUN_ID": spec["run_id"],
                 "SUITE_DEVICE_FILE": device_file, "OMP_NUM_THREADS": None}  # Ray sets OMP_NUM_THREADS=num_cpus
        crash = _crash_hook(toolchain, model, spec["attempt"])
        route_start = time.time()
        proc = envs.popen_in_env(env_name, argv, extra_env=extra, preexec_fn=_die_with_parent)
        mon = PeakRss(proc.pid)
        stream = Streamer(sink, f"{toolchain}/{model}", Path(tmp),
                          {**info, "route_start": route_start, "resources": spec["resources"]})
        try:
            while proc.poll() is None:
                if crash and _timed_row(Path(tmp)):
                    os.kill(proc.pid, signal.SIGKILL)  # the test hook: a route killed mid-run
                    crash = False
                stream.poll()
                time.sleep(0.2)
            rc = proc.returncode
        except KeyboardInterrupt:  # a polite ray.cancel: stop the route as Ctrl-C stops the local bench
            envs.interrupt(proc)
            raise
        finally:
            peak = mon.stop()
        route_end = time.time()
        rows = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
        records = list(read_item_records(tmp).values())
    task_end = time.time()
    rec = {**info, "route_start": route_start, "route_end": route_end, "task_end": task_end,
           "resources": spec["resources"]}
    for r in rows:
        r.setdefault("environment", {})["cluster"] = rec
    artifacts = None
    if spec["return_artifacts"] and (model_dir / toolchain).is_dir():
        artifacts = pack_folder(model_dir / toolchain, name=toolchain)
    return {**rec, "rows": rows, "records": records, "rc": rc, "peak_mb": peak}, artifacts


def _timed_row(folder: Path) -> bool:
    """A row with its latency written (the crash hook kills a route once it is timing)."""
    for p in folder.glob("*.json"):
        try:
            if json.loads(p.read_text()).get("latency_p50_ms") is not None:
                return True
        except (OSError, ValueError):
            continue
    return False


# ------------------------------------------------------------------------------ the driver

@dataclass
class Job:
    toolchain: str
    model: str
    items: list  # the plan's items of this route
    deps: list[str]
    attempt: int = 0
    hosts: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    finished: bool = False
    artifacts: object = None  # ObjectRef of the artifacts this route made, for the routes that need them
    submitted: float = 0.0  # when the current attempt was submitted (what a lost attempt cost)

    @property
    def name(self) -> str:
        return f"{self.toolchain}/{self.model}"


class RowSink:
    """An actor on the head node (where the driver is, or its Ray Client server): tasks put the items they finish,
    the driver takes them every couple of seconds and writes their rows and records."""

    def __init__(self):
        self.queue: list = []

    def put(self, name: str, rows: list, records: list) -> bool:
        self.queue.append((name, rows, records))
        return True

    def take(self) -> list:
        out, self.queue = self.queue, []
        return out


HEAD_RESOURCE = "node:__internal_head__"  # Ray's own resource of the head node


def start_sink():
    """The run's RowSink on the head node, or None (then rows come back only with each task's result)."""
    import ray

    try:
        opts = dict(num_cpus=0, max_restarts=0)
        if ray.cluster_resources().get(HEAD_RESOURCE):
            opts["resources"] = {HEAD_RESOURCE: 0.001}
        sink = ray.remote(RowSink).options(**opts).remote()
        ray.get(sink.take.remote(), timeout=120)
        return sink
    except Exception as exc:  # noqa: BLE001
        say(f"no row sink ({failure_reason(exc)}): rows come back with each task's result only")
        return None


def shipped_path(path: str) -> str:
    """A file's path on a node: relative to the working tree when it is inside it (the tree is the task's working
    directory there), else as it is (a local cluster's node is this machine)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(p)


def connect(address: str, runtime_env: dict) -> str:
    import ray

    kw = dict(runtime_env=runtime_env, namespace="ptq-bench", log_to_driver=True)
    if address == "local":
        ray.init(num_cpus=os.cpu_count() or 2, resources={BENCH_SLOT: 1}, include_dashboard=False,
                 object_store_memory=2 * 1024 ** 3, **kw)
        return "a local throw-away cluster (this machine, one bench slot)"
    ray.init(address=address, **kw)
    return address


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def suitable(nodes: list[dict], gpu: bool) -> list[dict]:
    return [n for n in nodes if n["Resources"].get(BENCH_SLOT, 0) >= 1 and (not gpu or n["Resources"].get("GPU", 0) >= 1)]


def need_text(gpu: bool) -> str:
    return f'{{"{BENCH_SLOT}": 1' + (', "GPU": 1}' if gpu else "}")


def cluster_summary() -> str:
    import ray

    res = ray.cluster_resources()
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU", BENCH_SLOT)) or "none"


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bench.build_parser().parse_args(argv)
    checked = bench.validate(args)
    if args.cluster is None:
        raise SuiteError("evaluation.launch.cluster runs `bench --cluster ADDRESS`; pass --cluster")
    plan, out = checked.plan, checked.out
    run_id = new_run_id("-ray")
    plan.run_id = run_id
    os.environ["SUITE_RUN_ID"] = run_id
    if args.online:
        os.environ["SUITE_ONLINE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "0")
    with RunLock(plan.runs_dir):
        t_start = time.time()
        outcome = Outcome()
        say(f"run {run_id}: {len(plan.items)} item(s) of {', '.join(plan.models())} x {', '.join(plan.toolchains())} "
            f"on cluster {args.cluster}; rows -> {plan.runs_dir}, tables -> {out}")

        # 1. models prepared once, here (the nodes get the files, never retrain); ceilings are measured per node
        prepared, rc = run.prepare_models(args, plan.models(), outcome.failures, ceilings=False)
        if rc == 2:
            return 2

        from utils.envinfo import git_commit

        env_vars = {"SUITE_GIT_COMMIT": git_commit(), "SUITE_LAUNCHER": "ray", "SUITE_RUN_ID": run_id,
                    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0" if args.online else "1")}
        if args.online:
            env_vars["SUITE_ONLINE"] = "1"
        if args.cluster == "local":  # the node is this machine: its environments and (if set) its node cache folder
            env_vars["SUITE_VENVS_DIR"] = str(envs.venvs_dir())
            if os.environ.get("SUITE_NODE_CACHE_DIR"):
                env_vars["SUITE_NODE_CACHE_DIR"] = os.environ["SUITE_NODE_CACHE_DIR"]
        if os.environ.get(CRASH_HOOK):
            env_vars[CRASH_HOOK] = os.environ[CRASH_HOOK]
        if os.environ.get(MODELS_ENV):  # a user's models files (--models-file), by their path inside the shipped tree
            env_vars[MODELS_ENV] = os.pathsep.join(shipped_path(f) for f in os.environ[MODELS_ENV].split(os.pathsep) if f)
        runtime_env = {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES, "env_vars": env_vars}

        import ray

        try:
            where = connect(args.cluster, runtime_env)
        except Exception as exc:  # noqa: BLE001  (a wrong address, no cluster running)
            raise SuiteError(f"--cluster {args.cluster}: cannot connect: {failure_reason(exc)}") from None
        try:
            nodes = alive_nodes()
            say(f"connected to {where}: {len(nodes)} node(s), {cluster_summary()}; commit {env_vars['SUITE_GIT_COMMIT']}")
            run_routes(args, plan, prepared, outcome.failures)
        except KeyboardInterrupt:
            say("interrupted: tasks cancelled; no rows written for routes that had not finished")
            raise
        finally:
            ray.shutdown()
        return run.finish(args, plan, out, outcome, envs.ensure_env, t_start, argv, who="cluster")


def run_routes(args, plan: Plan, prepared: dict, failures: list[str]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from utils.specs import ModelSource

    remote = ray.remote(route_task)
    run_id = plan.run_id
    sink = start_sink()

    def drain() -> None:
        """Write the items the tasks finished since the last call (before any result or loss is handled, so a
        retry leaves them out)."""
        nonlocal sink
        if sink is None:
            return
        try:
            batch = ray.get(sink.take.remote(), timeout=120)
        except Exception as exc:  # noqa: BLE001
            say(f"row sink lost ({failure_reason(exc)}): rows come back with each task's result only")
            sink = None
            return
        for name, rows, records in batch:
            for d in rows:
                write_row(ResultRow.from_dict(d), plan.runs_dir)
            for rec in records:
                write_item_record(plan.runs_dir, rec)
    in_run = set(plan.toolchains())
    jobs = [Job(t, m, plan.items_of(t, m), [d for d in TOOLCHAINS[t].needs if d in in_run and d != PREPARE_TOOLCHAIN])
            for t, m in plan.routes()]
    needed = {(d, j.model) for j in jobs for d in j.deps}
    by_name = {j.name: j for j in jobs}
    packs: dict[str, object] = {}

    def extra(job: Job) -> dict:
        return {"cluster": {"attempt": job.attempt, "hosts": job.hosts}}

    def finish(job: Job, status: str | None = None, reason: str = "") -> None:
        job.finished = True
        left = unfinished(plan, job.items, run_id)
        if status and left:
            if status == "failed":
                marked = mark_unfinished(plan, left, reason, run_id=run_id, launcher="ray", env_extra=extra(job))
                if not marked:  # every row was in; only the item records were missing
                    return
                failures.append(f"{job.name}: {reason} ({len(marked)} item(s) unfinished -> failed rows)")
            else:
                status_items(plan, left, status, reason, run_id=run_id, launcher="ray", env_extra=extra(job))
            say(f"{job.name}: {status}: {reason}")

    def submit(job: Job) -> object | None:
        gpu = needs_gpu(job.toolchain)
        nodes = suitable(alive_nodes(), gpu)
        if not nodes:
            status = "skipped" if job.attempt == 0 else "failed"
            why = (f"no node of the cluster offers what {job.toolchain} needs ({need_text(gpu)}; cluster: "
                   f"{cluster_summary()})")
            if status == "failed":
                why = f"no suitable node left after attempt {job.attempt} (on {', '.join(job.hosts) or 'a lost node'}): {why}"
            finish(job, status, why)
            return None
        if job.model not in packs:
            src = ModelSource(job.model, args.weights, args.weights_path, args.data)
            packs[job.model] = ray.put(pack_folder(src.cache_dir, skip_dirs=set(TOOLCHAINS)))
        job.attempt += 1
        left = unfinished(plan, job.items, run_id)  # a retry runs only what the last attempt did not finish
        resources = {BENCH_SLOT: 1, **({"GPU": 1} if gpu else {})}
        spec = {"toolchain": job.toolchain, "model": job.model, "attempt": job.attempt, "run_id": run_id,
                "plan": plan.subset(left).to_dict(), "resources": resources,
                "ceilings": bool(args.ceilings), "threads": plan.settings.threads,
                "return_artifacts": (job.toolchain, job.model) in needed}
        opts = dict(num_cpus=1, num_gpus=1 if gpu else 0, resources={BENCH_SLOT: 1}, max_retries=0, num_returns=2)
        fresh = [n for n in nodes if n["NodeID"] not in job.nodes]
        if job.nodes and fresh:  # a retry goes to another suitable node where there is one
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=fresh[0]["NodeID"], soft=True)
        dep_refs = [by_name[f"{d}/{job.model}"].artifacts for d in job.deps
                    if by_name.get(f"{d}/{job.model}") and by_name[f"{d}/{job.model}"].artifacts is not None]
        res_ref, art_ref = remote.options(**opts).remote(spec, packs[job.model], sink, *dep_refs)
        job.artifacts = art_ref
        job.submitted = time.time()
        say(f"{job.name}: submitted (attempt {job.attempt}, needs {need_text(gpu)}, {len(left)} item(s): "
            f"{', '.join(dict.fromkeys(it.method for it in left))})")
        return res_ref

    inflight: dict = {}
    pending = []
    for job in jobs:
        if prepared.get(job.model) != "ok":
            status_items(plan, job.items, "failed", prepared.get(job.model, "model not prepared"), run_id=run_id,
                         launcher="ray")
            job.finished = True
        else:
            pending.append(job)
    try:
        while pending or inflight:
            for job in list(pending):
                if all(by_name[f"{d}/{job.model}"].finished for d in job.deps if f"{d}/{job.model}" in by_name):
                    pending.remove(job)
                    ref = submit(job)
                    if ref is not None:
                        inflight[ref] = job
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=2.0)
            drain()
            for ref in ready:
                job = inflight.pop(ref)
                again = handle(job, ref, args, plan, finish, failures)
                if again:
                    nref = submit(job)
                    if nref is not None:
                        inflight[nref] = job
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cancelling short
        for ref in inflight:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:  # noqa: BLE001  (the local cluster may already be going down with the signal)
                say(f"cancel {inflight[ref].name}: {failure_reason(exc)}")
        raise


def handle(job: Job, ref, args, plan: Plan, finish, failures: list[str]) -> bool:
    """One finished attempt: write its rows and item records; True when the route should be tried again."""
    import ray

    try:
        res = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the node or the worker died, the task was cancelled, ...
        job.artifacts = None
        # the items it finished reached the driver through the sink (drained before this); the retry runs the rest
        why = f"task lost on the cluster {time.time() - job.submitted:.0f} s after it was submitted ({failure_reason(exc)})"
        return _retry_or_fail(job, args, why, finish)
    job.hosts.append(res["host"])
    job.nodes.append(res["node_id"])
    if "env_error" in res:
        job.artifacts = None
        finish(job, "skipped", f"environment could not be created on {res['host']}: {res['env_error']}")
        return False
    for d in res["rows"]:
        write_row(ResultRow.from_dict(d), plan.runs_dir)
    for rec in res.get("records") or []:
        write_item_record(plan.runs_dir, rec)
    rc = res["rc"]
    took = res["task_end"] - res["task_start"]
    if rc == 0:
        finish(job, "failed", f"route process ended without finishing this item on {res['host']}")
        say(f"{job.name}: done on {res['host']} in {took:.0f} s ({len(res['rows'])} rows)")
        return False
    if rc == 2:
        finish(job, "failed", f"route exited 2 (bad input) on {res['host']}")
        return False
    why = died_reason(rc, res.get("peak_mb")) + f" on {res['host']}"
    if not unfinished(plan, job.items, plan.run_id):  # as the local bench: every item is in, yet the process died
        finish(job)
        failures.append(f"{job.name}: {why}, after finishing every item")
        say(failures[-1])
        return False
    return _retry_or_fail(job, args, why, finish)


def _retry_or_fail(job: Job, args, why: str, finish) -> bool:
    if job.attempt <= args.retries:
        say(f"{job.name}: attempt {job.attempt} failed: {why}; trying again")
        return True
    finish(job, "failed", f"{why} (attempt {job.attempt} of {args.retries + 1})")
    return False


if __name__ == "__main__":
    raise SystemExit(main())
