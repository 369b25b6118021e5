from evaluation.launch import envs


def test_requirements_hash_tracks_every_included_file(tmp_path, monkeypatch):
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    (tmp_path / "base.txt").write_text("numpy==2.4.6\n")
    (tmp_path / "report.txt").write_text("-r base.txt\npandas==3.1.1\n")
    monkeypatch.setattr(envs, "REQUIREMENTS_DIR", tmp_path)
    h1 = envs.requirements_hash("report")
    assert envs.requirements_hash("report") == h1
    (tmp_path / "base.txt").write_text("numpy==2.4.5\n")  # an included file changed -> rebuild
    h2 = envs.requirements_hash("report")
    assert h2 != h1
    (tmp_path / "constraints.txt").write_text("torch==2.12.0\n")
    assert envs.requirements_hash("report") != h2


def test_every_env_has_its_requirements_and_a_test_folder():
    from evaluation.launch.tests import TEST_DIRS
    from utils.paths import REPO_ROOT, REQUIREMENTS_DIR
    from utils.registry import TOOLCHAINS

    for name, parts in envs.ENVS.items():
        for part in parts:
            assert part.optional or (REQUIREMENTS_DIR / part.file).is_file(), part.file
        assert (REPO_ROOT / TEST_DIRS[name]).is_dir(), name
    assert {tc.env.name for tc in TOOLCHAINS.values()} <= set(envs.ENVS)


# ------------------------------------------------------------------ an existing interpreter (--python, --use-current-python)

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def overrides(monkeypatch, tmp_path):
    """A clean override map, and a venv folder where nothing may be created."""
    monkeypatch.setattr(envs, "OVERRIDES", {})
    monkeypatch.setattr(envs, "VENVS_DIR", tmp_path / "venvs")
    monkeypatch.delenv("SUITE_VENVS_DIR", raising=False)  # it would win over VENVS_DIR (envs.venvs_dir)
    return envs.OVERRIDES


def test_existing_interpreter_is_used_and_nothing_is_created(overrides, tmp_path):
    envs.parse_python_flags([f"onnxruntime={sys.executable}"], False, ())
    assert envs.env_python("onnxruntime") == envs.OVERRIDES["onnxruntime"]
    stamp = envs.ensure_env("onnxruntime")
    assert stamp["existing_python"] == str(envs.OVERRIDES["onnxruntime"])
    assert not (tmp_path / "venvs").exists()  # no venv made, no pip run
    p = envs.run_in_env("onnxruntime", ["-c", "import os, sys; print(sys.executable, os.environ['SUITE_ENV_SOURCE'])"],
                        capture_output=True, text=True)
    assert p.returncode == 0 and "existing interpreter" in p.stdout and "--python onnxruntime=" in p.stdout
    # environments without an override still point at their suite venv
    assert envs.env_python("torch") == tmp_path / "venvs" / "torch" / "bin" / "python"


def test_use_current_python_covers_the_given_envs_and_explicit_wins(overrides):
    envs.parse_python_flags([f"torch={sys.executable}"], True, ("torch", "report"))
    assert set(envs.OVERRIDES) == {"torch", "report"}


@pytest.mark.parametrize("flag, match", [("torch", "expected NAME=PATH"), ("nosuch=/usr/bin/python3", "unknown environment"),
                                         ("torch=/no/such/python", "no executable interpreter")])
def test_bad_python_flags(overrides, flag, match):
    with pytest.raises(envs.EnvError, match=match):
        envs.parse_python_flags([flag], False, ())


def test_missing_module_is_named_in_one_line(overrides, monkeypatch):
    envs.use_python("report", sys.executable)
    monkeypatch.setitem(envs.IMPORTS, "report", ("json", "no_such_module_for_the_suite_test"))
    why = envs.missing_imports("report")
    assert why is not None and "\n" not in why
    assert "lacks no_such_module_for_the_suite_test" in why and str(envs.OVERRIDES["report"]) in why and "json" not in why.split("lacks")[1]
    monkeypatch.setitem(envs.IMPORTS, "report", ("json", "xml.etree"))
    assert envs.missing_imports("report") is None


def test_every_env_declares_its_imports():
    for name, mods in envs.IMPORTS.items():
        assert mods and "numpy" in mods, name


def _bench(*args, env=None):
    import os

    from utils.paths import REPO_ROOT

    return subprocess.run([sys.executable, "-m", "evaluation.bench", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **(env or {})))


def test_bench_exits_2_in_one_line_when_the_interpreter_lacks_a_package(tmp_path):
    """This interpreter (the report env) has no torch: --use-current-python for torch stops before anything runs."""
    pytest.importorskip("pandas")
    if __import__("importlib").util.find_spec("torch") is not None:
        pytest.skip("this interpreter has torch")
    runs = tmp_path / "runs"
    p = _bench("--toolchains", "torch", "--models", "resnet50", "--use-current-python", "--runs-dir", str(runs),
               "--no-report", env={"SUITE_VENVS_DIR": str(tmp_path / "venvs")})
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "lacks" in lines[0] and "torch" in lines[0] and sys.executable in lines[0], p.stderr
    assert not runs.exists() and not (tmp_path / "venvs").exists()  # nothing written, nothing created


def test_rows_record_the_interpreter(monkeypatch):
    from utils import envinfo

    monkeypatch.setenv("SUITE_ENV_SOURCE", "existing interpreter /x/python (--python torch=...)")
    rec = envinfo.environment_record()
    assert rec["interpreter"] == sys.executable and rec["interpreter_source"].startswith("existing interpreter")
    monkeypatch.delenv("SUITE_ENV_SOURCE")
    assert envinfo.environment_record()["interpreter_source"] in ("suite venv", "not a suite venv (run directly)")


def test_test_command_checks_the_existing_interpreter_first(overrides, monkeypatch, capsys):
    from evaluation.launch import tests as test_cmd

    monkeypatch.setitem(envs.IMPORTS, "report", ("no_such_module_for_the_suite_test",))
    monkeypatch.setattr(envs, "run_in_env", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran pytest")))
    assert test_cmd.main(["report", "--python", f"report={sys.executable}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lacks no_such_module_for_the_suite_test" in err


def test_suite_environments_cache_bytecode_under_the_venvs_folder(monkeypatch):
    """A suite environment's child writes bytecode under .venvs/.pycache even where PYTHONDONTWRITEBYTECODE is set
    (every route process would otherwise compile torch and transformers from source again); nothing is written
    beside the sources, and an existing interpreter (--python ENV=PATH) keeps the caller's setting."""
    import subprocess
    import sys

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    code = ["-c", "import sys; print(sys.pycache_prefix); print(sys.dont_write_bytecode)"]
    monkeypatch.setattr(envs, "env_python", lambda name: sys.executable)
    out = envs.run_in_env("report", code, stdout=subprocess.PIPE, text=True).stdout.split()
    assert out == [str(envs.venvs_dir() / ".pycache"), "False"]
    monkeypatch.setattr(envs, "OVERRIDES", {"report": sys.executable})
    out = envs.run_in_env("report", code, stdout=subprocess.PIPE, text=True).stdout.split()
    assert out == ["None", "True"]
