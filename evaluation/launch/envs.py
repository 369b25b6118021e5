"""One virtualenv per toolchain, created on demand from requirements/ and reused while unchanged.

Stdlib only: this runs under the bare system Python that starts the bench and test commands.
An environment is rebuilt when the text of any of its requirements files (or the
constraints file) changes; an optional part (e.g. TensorRT, which the public registry only
ships as a stub) may fail to install, which is recorded once and not retried until the
requirements change.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from utils.paths import REPO_ROOT, REQUIREMENTS_DIR, VENVS_DIR
from utils.registry import Part, all_envs

# environment name -> its requirement parts, read from the one declaration (utils/registry.py)
ENVS: dict[str, tuple[Part, ...]] = {name: decl.parts for name, decl in all_envs().items()}
# environment name -> modules copied into its site-packages with a start-up .pth line (EnvDecl.site_hooks)
SITE_HOOKS: dict[str, tuple[str, ...]] = {name: decl.site_hooks for name, decl in all_envs().items()}
HOOK_PREFIX = "_ptq_suite_"
CONSTRAINTS = "constraints.txt"
STAMP = "suite-env.json"


class EnvError(RuntimeError):
    pass


def _included(path: Path) -> list[Path]:
    """The file plus every `-r other.txt` it includes (recursively)."""
    out = [path]
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith(("-r ", "--requirement ")):
            out += _included(path.parent / line.split(None, 1)[1].strip())
    return out


def requirements_hash(name: str) -> str:
    h = hashlib.sha256(sys.version.encode())
    h.update(os.environ.get("SUITE_SYSTEM_SITE_PACKAGES", "").encode())
    files = [REQUIREMENTS_DIR / CONSTRAINTS]
    for part in ENVS[name]:
        p = REQUIREMENTS_DIR / part.file
        if p.exists():
            files += _included(p)
        h.update(repr((part.file, part.pip_args, part.optional)).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def venvs_dir() -> Path:
    """Where the environments live: SUITE_VENVS_DIR read when used (a long-lived process, e.g. a cluster worker,
    points it at its node's folder), else utils.paths.VENVS_DIR."""
    return Path(os.environ["SUITE_VENVS_DIR"]) if os.environ.get("SUITE_VENVS_DIR") else VENVS_DIR


def env_dir(name: str) -> Path:
    return venvs_dir() / name


# environment name -> an existing interpreter that already holds it (bench/test --python NAME=PATH,
# --use-current-python): no virtualenv is created or checked for these, their declared imports are
IMPORTS: dict[str, tuple[str, ...]] = {name: decl.imports for name, decl in all_envs().items()}
OVERRIDES: dict[str, Path] = {}


def env_python(name: str) -> Path:
    if name in OVERRIDES:
        return OVERRIDES[name]
    return env_dir(name) / "bin" / "python"


def use_python(name: str, python: str | Path) -> Path:
    """Run environment `name` with an existing interpreter (no venv). Raises EnvError (one line) if it is not one."""
    if name not in ENVS:
        raise EnvError(f"unknown environment {name!r} in --python; valid: {', '.join(ENVS)}")
    p = Path(python).expanduser()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise EnvError(f"--python {name}={python}: no executable interpreter at {p}")
    OVERRIDES[name] = p.absolute()
    return OVERRIDES[name]


def parse_python_flags(items: list[str] | None, use_current: bool, current_for) -> dict[str, Path]:
    """--python NAME=PATH (repeatable) and --use-current-python (the environments in `current_for` run in
    sys.executable; an explicit --python for one of them wins). Sets OVERRIDES; returns them."""
    if use_current:
        for name in current_for:
            use_python(name, sys.executable)
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EnvError(f"--python {item!r}: expected NAME=PATH, e.g. torch=/usr/bin/python3")
        use_python(name.strip(), path.strip())
    return dict(OVERRIDES)


_IMPORT_CHECK = (
    "import importlib.util, sys\n"
    "missing = []\n"
    "for m in sys.argv[1:]:\n"
    "    try:\n"
    "        found = importlib.util.find_spec(m) is not None\n"
    "    except (ImportError, ValueError):\n"
    "        found = False\n"
    "    if not found:\n"
    "        missing.append(m)\n"
    "print(' '.join(missing))\n"
)


def missing_imports(name: str, extra: tuple[str, ...] = ()) -> str | None:
    """One line naming what environment `name`'s interpreter lacks of its declared modules (found without
    being imported: some need a GPU at import), or None."""
    python = env_python(name)
    mods = tuple(dict.fromkeys(IMPORTS.get(name, ()) + extra))
    try:
        p = subprocess.run([str(python), "-c", _IMPORT_CHECK, *mods], capture_output=True, text=True, timeout=120,
                           cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"environment '{name}': {python} could not be run ({exc})"
    if p.returncode != 0:
        return f"environment '{name}': {python} could not check its modules: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    missing = p.stdout.split()
    if missing:
        return (f"environment '{name}': {python} lacks {', '.join(missing)} (declared for '{name}' in "
                f"utils/registry.py); install them there, or drop --python {name}=... to use a suite venv")
    return None


def read_stamp(name: str) -> dict | None:
    try:
        return json.loads((env_dir(name) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def is_ready(name: str) -> bool:
    stamp = read_stamp(name)
    return bool(stamp) and stamp.get("hash") == requirements_hash(name) and env_python(name).exists()


def _log(msg: str) -> None:
    print(f"[envs] {msg}", file=sys.stderr, flush=True)


# the creation steps (venv, pip) running now, so that Builds.cancel can stop them; once it has, no new one starts
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()
_CANCELLED = threading.Event()


INTERRUPTED = "environment creation was interrupted"

# niceness of environments created in the background (the bench while models are prepared, the test command while
# earlier folders' tests run). Measured on 2 cores, models.prepare beside 6 creations: ResNet50 training 105 s
# instead of 204 s, 282 s to the last environment instead of 323 s
BACKGROUND_NICE = 19


def _step(cmd: list[str], fh, nice: int = 0, **kw) -> int:
    """Run one creation step with its output in the log (`fh`, a file opened for writing); its return code.
    Raises EnvError once creation was cancelled (Builds.cancel), before or while it runs, and when the step itself
    was stopped by Ctrl-C (a terminal's SIGINT reaches pip too): an interrupted optional part must not be
    recorded as failed in a stamp, as if the environment were ready without it."""
    import signal

    fh.flush()
    start = fh.tell()
    with _RUNNING_LOCK:
        if _CANCELLED.is_set():
            raise EnvError(INTERRUPTED)
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, **kw)
        if nice:  # set before pip starts any process of its own (they inherit it); no preexec_fn in a threaded parent
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        _RUNNING.add(proc)
    try:
        rc = proc.wait()
    except BaseException:  # KeyboardInterrupt in the thread that runs it: stop the step too
        proc.kill()
        proc.wait()
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    if _CANCELLED.is_set() or rc in (-signal.SIGINT, 128 + signal.SIGINT):
        raise EnvError(INTERRUPTED)
    if rc != 0:
        try:
            with open(fh.name, errors="replace") as log:
                log.seek(start)
                tail = log.read()
        except (OSError, TypeError):
            tail = ""
        if "Operation cancelled by user" in tail or "KeyboardInterrupt" in tail:  # pip's (and Python's) Ctrl-C
            raise EnvError(INTERRUPTED)
    return rc


def ensure_env(name: str, *, quiet: bool = False, nice: int = 0) -> dict:
    """Create (or reuse) the environment; return its stamp. Raises EnvError with a one-line reason.
    nice: the creation steps' CPU niceness (background creation gives way to the work in the foreground)."""
    if name not in ENVS:
        raise EnvError(f"unknown environment {name!r}; valid: {', '.join(ENVS)}")
    if name in OVERRIDES:  # an existing interpreter: nothing to create (its modules were checked up front)
        return {"existing_python": str(OVERRIDES[name]), "optional_failed": {}}
    if is_ready(name):
        install_site_hooks(name)  # an environment made before its hooks were declared (or changed) gets them now
        return read_stamp(name)
    d = env_dir(name)
    log = venvs_dir() / f"{name}.log"
    venvs_dir().mkdir(parents=True, exist_ok=True)
    if d.exists():
        shutil.rmtree(d)
    t0 = time.time()
    _log(f"creating environment '{name}' in {d} (pip log: {log}) ...")
    with open(log, "w") as fh:
        venv_cmd = [sys.executable, "-m", "venv", str(d)]
        if os.environ.get("SUITE_SYSTEM_SITE_PACKAGES") == "1":  # e.g. an NGC container's TensorRT
            venv_cmd.append("--system-site-packages")
        rc = _step(venv_cmd, fh, nice)
        if rc != 0:
            raise subprocess.CalledProcessError(rc, venv_cmd)
        stamp = {"hash": requirements_hash(name), "optional_failed": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for part in ENVS[name]:
            req = REQUIREMENTS_DIR / part.file
            if not req.exists():
                if part.optional:
                    continue
                raise EnvError(f"environment '{name}': {req} is missing")
            cmd = [
                # --no-compile: no bytecode for every installed file at install time (measured: the ORT baseline
                # environment in 8.6 s instead of 25.3 s); Python writes it for what is imported, on first import
                str(env_python(name)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                "--no-compile",
                "-c", str(REQUIREMENTS_DIR / CONSTRAINTS), *part.pip_args, "-r", str(req),
            ]
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            rc = _step(cmd, fh, nice, cwd=REPO_ROOT)
            if rc != 0:
                reason = _last_error(log) or f"pip exited {rc}"
                if part.optional:
                    stamp["optional_failed"][part.file] = reason
                    _log(f"optional part {part.file} of '{name}' did not install: {reason}")
                    continue
                raise EnvError(f"environment '{name}' could not be created ({part.file}): {reason}")
    from utils.atomic import atomic_write_json

    if _CANCELLED.is_set():
        raise EnvError(INTERRUPTED)
    install_site_hooks(name)
    atomic_write_json(d / STAMP, stamp)  # last: an environment is ready only once every step finished
    _log(f"environment '{name}' ready in {time.time() - t0:.0f} s")
    return stamp


def site_packages(name: str) -> Path | None:
    """The site-packages folder of a suite environment (None when it has none yet)."""
    found = sorted(env_dir(name).glob("lib/python*/site-packages"))
    return found[0] if found else None


def hook_files(module: str) -> dict[str, str]:
    """file name -> text of what a site hook puts into site-packages: the module itself (copied from the
    repository under a name of the suite's) and a .pth line that runs its install() at interpreter start."""
    mod = HOOK_PREFIX + module.rsplit(".", 1)[-1]
    src = (REPO_ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    header = f"# copied from {module} by the PTQ suite (evaluation/launch/envs.py); rewritten when it changes\n"
    return {f"{mod}.py": header + src, f"{mod}.pth": f"import {mod}; {mod}.install()\n"}


def install_site_hooks(name: str) -> list[str]:
    """Put environment `name`'s declared site hooks into its site-packages where they are missing or differ (a file
    read and compared: cheap on every use). Returns the files written. A folder that cannot be written is said in
    one line and left as it is (the suite's own code imports through utils/torchvision_compat.py all the same)."""
    hooks = SITE_HOOKS.get(name) or ()
    site = site_packages(name) if hooks and name not in OVERRIDES else None
    written: list[str] = []
    if site is None:
        return written
    from utils.atomic import atomic_write_text

    for module in hooks:
        for fname, text in hook_files(module).items():
            path = site / fname
            try:
                if path.is_file() and path.read_text(encoding="utf-8") == text:
                    continue
                atomic_write_text(path, text)
                written.append(fname)
            except OSError as exc:
                _log(f"environment '{name}': could not install {fname} into {site}: {exc}")
    if written:
        _log(f"environment '{name}': start-up hook(s) installed: {', '.join(written)}")
    return written


class Builds:
    """Create environments in the background, at most `parallel` at once (one thread each, waiting their turn),
    while the caller does other work (the bench: model preparation). `ensure(name)` is `ensure_env` for every
    environment: one started here is waited for and its outcome given (its stamp, or the very error creating it
    raised, e.g. the EnvError with its one-line reason); any other is created (or reused) now. `join()` waits for
    all; `cancel()` stops every creation step under way (SIGINT, then kill) and starts none: an environment
    interrupted half-way has no stamp (ensure_env writes it last), so it is never taken as ready."""

    def __init__(self, names, parallel: int = 2, *, quiet: bool = False, nice: int = 0):
        self.names = [n for n in dict.fromkeys(names)]
        self.nice = nice
        self._slots = threading.Semaphore(max(1, parallel))
        self._outcome: dict[str, tuple[dict | None, BaseException | None]] = {}
        self._threads: dict[str, threading.Thread] = {}
        _CANCELLED.clear()
        for n in self.names:
            t = threading.Thread(target=self._build, args=(n, quiet), name=f"env-{n}", daemon=True)
            self._threads[n] = t
            t.start()

    def _build(self, name: str, quiet: bool) -> None:
        with self._slots:
            try:
                if _CANCELLED.is_set():
                    raise EnvError(INTERRUPTED)
                self._outcome[name] = (ensure_env(name, quiet=quiet, nice=self.nice), None)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for this environment
                self._outcome[name] = (None, exc)

    def join(self, timeout: float | None = None) -> dict[str, BaseException]:
        """Wait for every background creation; the environments that could not be created -> their error."""
        for t in self._threads.values():
            t.join(timeout)
        return {n: exc for n, (_, exc) in self._outcome.items() if exc is not None}

    def ensure(self, name: str) -> dict:
        t = self._threads.get(name)
        if t is None:
            return ensure_env(name)
        t.join()
        stamp, exc = self._outcome.get(name, (None, EnvError(f"environment '{name}': {INTERRUPTED}")))
        if exc is not None:
            raise exc
        return stamp

    def cancel(self, timeout: float = 30) -> None:
        """Stop every creation step under way and start no other; wait for the threads (bounded)."""
        import signal

        with _RUNNING_LOCK:
            _CANCELLED.set()
            running = list(_RUNNING)
        for proc in running:  # Ctrl-C each step (pip stops cleanly), together
            try:
                proc.send_signal(signal.SIGINT)
            except OSError:
                pass
        deadline = time.time() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.join(timeout)
        if not any(t.is_alive() for t in self._threads.values()):
            _CANCELLED.clear()  # every creation has stopped: a later ensure_env (another run) may create again


def _last_error(log: Path) -> str:
    """The last error line of a pip log, with the line after it when the error line alone says little."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    idx = [i for i, ln in enumerate(lines) if ln.startswith("ERROR") or "Error" in ln.split(":")[0]]
    if not idx:
        return (lines[-1] if lines else "")[:300]
    i = idx[-1]
    msg = lines[i]
    if len(msg.rstrip(":").split(":", 1)[-1].strip()) < 8 and i + 1 < len(lines):
        msg = f"{msg} {lines[i + 1]}"
    return msg[:300]


def bytecode_env() -> dict:
    """How the suite's own environments cache bytecode: under `.venvs/.pycache` (PYTHONPYCACHEPREFIX), never beside
    the sources, even where PYTHONDONTWRITEBYTECODE is set (it is dropped for them). The environments are created
    with pip --no-compile, so without a cache every route process compiled torch, transformers and inductor from
    source again: measured on 2 cores, importing the torch route's modules took 12 s each time instead of 5 s."""
    return {"PYTHONPYCACHEPREFIX": str(venvs_dir() / ".pycache"), "PYTHONDONTWRITEBYTECODE": None}


def _child_env(name: str | None = None, extra: dict | None = None) -> dict:
    """The child's environment: ours, the repository on PYTHONPATH, `extra` on top (a None value removes a name)."""
    env = dict(os.environ)
    if name in OVERRIDES:  # recorded in the rows' environment record (utils/envinfo.py)
        env["SUITE_ENV_SOURCE"] = f"existing interpreter {OVERRIDES[name]} (--python {name}=...)"
    else:
        env.pop("SUITE_ENV_SOURCE", None)
    own = bytecode_env() if name is not None and name not in OVERRIDES else {}
    for k, v in {**own, **(extra or {})}.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env["PYTHONPATH"] else "")
    if "HF_HUB_OFFLINE" not in env:  # nothing may hang on a hub look-up unless asked to go online
        env["HF_HUB_OFFLINE"] = "0" if env.get("SUITE_ONLINE") else "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_in_env(name: str, args: list[str], extra_env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `<env python> <args>` from the repository root (so `-m package.module` resolves)."""
    return subprocess.run([str(env_python(name)), *args], cwd=REPO_ROOT, env=_child_env(name, extra_env), **kwargs)


def interrupt(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Ctrl-C a child the way a terminal does (SIGINT), give it `timeout` seconds to write nothing half-way, then
    kill it."""
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - TimeoutExpired or an interrupted wait: stop it for good
        proc.kill()


def popen_in_env(name: str, args: list[str], extra_env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start `<env python> <args>` from the repository root; the caller waits (and may watch its memory)."""
    return subprocess.Popen([str(env_python(name)), *args], cwd=REPO_ROOT, env=_child_env(name, extra_env), **kwargs)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python3 -m evaluation.launch.envs", description="Create or reuse toolchain virtualenvs.")
    ap.add_argument("names", nargs="*", default=list(ENVS), help=f"environments (default: all): {', '.join(ENVS)}")
    args = ap.parse_args(argv)
    rc = 0
    for n in args.names:
        try:
            stamp = ensure_env(n)
            print(f"{n}: ready ({env_dir(n)})" + (f"; optional parts missing: {stamp['optional_failed']}" if stamp.get("optional_failed") else ""))
        except EnvError as exc:
            print(f"{n}: error: {exc}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
