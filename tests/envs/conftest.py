import pytest

pytest.importorskip("gymnasium", reason="robot tasks need the [robot] extra")
pytest.importorskip("mujoco", reason="robot tasks need the [robot] extra")


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Demonstrations recorded by the tests go to a temporary cache, shared by the session."""
    monkeypatch.setenv("FLOWPOST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
