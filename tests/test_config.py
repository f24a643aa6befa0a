import pytest

from hotdeal.config import ConfigError, ServerSettings, Settings, env


def test_file_variant_wins_and_is_stripped(tmp_path, monkeypatch):
    secret = tmp_path / "url"
    secret.write_text("redis://:s3cret@db:6379/0\n")
    monkeypatch.setenv("HOTDEAL_REDIS_URL", "redis://stale")
    monkeypatch.setenv("HOTDEAL_REDIS_URL_FILE", str(secret))
    assert env("HOTDEAL_REDIS_URL") == "redis://:s3cret@db:6379/0"


def test_unreadable_file_names_the_variable(monkeypatch):
    monkeypatch.setenv("HOTDEAL_DATABASE_URL_FILE", "/nonexistent/secret")
    with pytest.raises(ConfigError, match="HOTDEAL_DATABASE_URL_FILE"):
        Settings.from_env()


def test_defaults_follow_the_workshop(monkeypatch):
    for name in ("HOTDEAL_HOLD_MS", "HOTDEAL_ORDER_WRITE", "HOTDEAL_PER_USER_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.hold_ms, s.order_write, s.per_user_limit, s.legacy_slots) == (30, "stream", 1, 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOTDEAL_HOLD_MS", "abc"),
        ("HOTDEAL_HOLD_MS", "-1"),
        ("HOTDEAL_ORDER_WRITE", "maybe"),
        ("HOTDEAL_LEGACY_SLOTS", "0"),
    ],
)
def test_bad_values_are_refused_with_the_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.from_env()


def test_missing_urls_are_reported():
    with pytest.raises(ConfigError, match="HOTDEAL_DATABASE_URL"):
        Settings().need_database()
    with pytest.raises(ConfigError, match="HOTDEAL_REDIS_URL"):
        Settings().need_redis()


def test_every_setting_is_documented_and_every_documented_one_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = "\n".join(
        p.read_text()
        for folder in ("src", "images", "ops", "tools")
        for p in (root / folder).rglob("*.py")
    )
    used = set(re.findall(r"HOTDEAL_[A-Z0-9_]+", code)) - {"HOTDEAL_LIST"}
    used = {u.removesuffix("_FILE") for u in used}
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Architecture")]
    documented = set(re.findall(r"HOTDEAL_[A-Z0-9_]+", table))
    assert used - documented == set(), "undocumented settings"
    assert documented - used == set(), "documented settings no code reads"


def test_a_sync_worker_is_not_given_threads(monkeypatch):
    """gunicorn 27 quietly runs gthread instead of a sync worker given threads (a helper
    saw legacy with HOTDEAL_WORKER_CLASS=sync log "Using worker: gthread")."""
    monkeypatch.setenv("HOTDEAL_WORKER_CLASS", "sync")
    assert ServerSettings.from_env().threads_for("sync", gthread=32) == 1
    monkeypatch.setenv("HOTDEAL_THREADS", "8")
    with pytest.raises(ConfigError, match="HOTDEAL_THREADS=8 needs HOTDEAL_WORKER_CLASS=gthread"):
        ServerSettings.from_env()
    monkeypatch.setenv("HOTDEAL_WORKER_CLASS", "gthread")
    assert ServerSettings.from_env().threads_for("gthread", gthread=32) == 8
