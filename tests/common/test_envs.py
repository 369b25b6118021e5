from evaluation import envs


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
    from evaluation.test import TEST_DIRS
    from utils.paths import REPO_ROOT, REQUIREMENTS_DIR
    from utils.registry import TOOLCHAINS

    for name, parts in envs.ENVS.items():
        for part in parts:
            assert part.optional or (REQUIREMENTS_DIR / part.file).is_file(), part.file
        assert (REPO_ROOT / TEST_DIRS[name]).is_dir(), name
    assert {tc.env.name for tc in TOOLCHAINS.values()} <= set(envs.ENVS)
