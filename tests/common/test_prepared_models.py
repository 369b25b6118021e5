"""A test that needs an embedded model fails when the test command's model-preparing folder ran first and the model
is still missing; it skips (saying why) only when nothing has prepared it (tests/prepared.py, evaluation/launch/tests.py)."""
import subprocess

import pytest

from tests.prepared import PREPARED_ENV_VAR, embedded_manifest


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    import utils.specs

    monkeypatch.setattr(utils.specs, "CACHE_DIR", tmp_path / "cache")  # what SUITE_CACHE_DIR points ModelSource at
    monkeypatch.delenv(PREPARED_ENV_VAR, raising=False)
    return tmp_path / "cache"


def test_missing_model_fails_after_the_preparing_folder(empty_cache, monkeypatch):
    monkeypatch.setenv(PREPARED_ENV_VAR, "1")
    with pytest.raises(pytest.fail.Exception, match="embedded gpt2 missing although this test run's torch folder"):
        embedded_manifest("gpt2")


def test_missing_model_skips_with_the_reason_when_nothing_prepared_it(empty_cache):
    with pytest.raises(pytest.skip.Exception, match="run the torch tests first"):
        embedded_manifest("resnet50")


def test_the_test_command_tells_the_folders_after_the_preparing_one(monkeypatch, tmp_path):
    from evaluation.launch import envs
    from evaluation.launch import tests as runner

    names = ["torch", "report", "onnxruntime"]
    seen = {}
    monkeypatch.setattr(runner, "TEST_DIRS", {n: "tests" for n in names})
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(envs, "OVERRIDES", {})
    monkeypatch.setattr(envs, "is_ready", lambda name: True)
    monkeypatch.setattr(envs, "ensure_env", lambda name, **kw: None)

    def run_in_env(name, cmd, extra_env=None, **kw):
        seen[name] = extra_env
        (tmp_path / "junit").mkdir(exist_ok=True)
        (tmp_path / "junit" / f"{name}.xml").write_text('<testsuite tests="1" failures="0" errors="0" skipped="0"/>')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(envs, "run_in_env", run_in_env)
    assert runner.main(names) == 0
    assert seen == {"torch": None, "report": {PREPARED_ENV_VAR: "1"}, "onnxruntime": {PREPARED_ENV_VAR: "1"}}
    assert runner.main(["report", "onnxruntime"]) == 0  # the preparing folder did not run: nobody is told
    assert seen["report"] is None and seen["onnxruntime"] is None
    assert runner.main([*names, "-k", "ceilings"]) == 0  # a -k run may not have prepared anything
    assert all(v is None for v in seen.values())
