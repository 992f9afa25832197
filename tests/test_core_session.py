import json

import pytest

from workbench.core.errors import SessionError
from workbench.core.recipe import ModelSpec, OptStep, Recipe
from workbench.core.session import SessionStore


def make(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    r = Recipe(ModelSpec("demo:minilm"), [OptStep("prune-l1", {"sparsity": 0.5, "scope": "layer"})])
    return store, store.create("s1", r, {"python": "3.11"})


def test_create_open_round_trip(tmp_path):
    store, s = make(tmp_path)
    s.add_run({"id": 1, "speedup": 1.5, "baseline": {"x": 1}})
    again = store.open("s1")
    assert again.recipe.to_dict() == s.recipe.to_dict()
    assert again.environment == {"python": "3.11"}
    assert again.results["runs"][0]["speedup"] == 1.5
    assert store.list()[0]["best_speedup"] == 1.5
    text = (tmp_path / "sessions/s1/session.toml").read_text()
    assert 'ref = "demo:minilm"' in text and "sparsity = 0.5" in text  # human readable


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", ".hidden", "x" * 65, "/abs"])
def test_names_cannot_escape(tmp_path, name):
    store = SessionStore(tmp_path / "sessions")
    with pytest.raises(SessionError, match="not allowed"):
        store.path(name)
    assert not (tmp_path / "evil").exists()


def test_corrupt_toml_is_reported_and_not_overwritten(tmp_path):
    store, s = make(tmp_path)
    broken = "schema = 1\nname = [unclosed\n"
    s.toml_path.write_text(broken)
    with pytest.raises(SessionError, match=r"session.toml: cannot be parsed"):
        store.open("s1")
    with pytest.raises(SessionError, match="not overwritten"):
        s.save()
    assert s.toml_path.read_text() == broken


def test_corrupt_results_are_reported_and_kept(tmp_path):
    store, s = make(tmp_path)
    s.results_path.write_text("{not json")
    with pytest.raises(SessionError, match="results.json: cannot be parsed"):
        store.open("s1")
    with pytest.raises(SessionError):
        s.add_run({"id": 1})
    assert s.results_path.read_text() == "{not json"
    assert "error" in store.list()[0]


def test_writes_are_atomic_no_temp_files_left(tmp_path):
    store, s = make(tmp_path)
    for i in range(5):
        s.add_run({"id": i})
    names = sorted(p.name for p in s.dir.iterdir())
    assert names == ["results.json", "session.toml"]
    assert len(json.loads(s.results_path.read_text())["runs"]) == 5


def test_rename_and_delete(tmp_path):
    store, s = make(tmp_path)
    store.rename("s1", "s2")
    assert store.open("s2").name == "s2" and not store.exists("s1")
    store.create("s3", s.recipe)
    with pytest.raises(SessionError, match="already exists"):
        store.rename("s3", "s2")
    store.delete("s2")
    assert not store.exists("s2")
    with pytest.raises(SessionError, match="not found"):
        store.delete("s2")


def test_schema_mismatch(tmp_path):
    store, s = make(tmp_path)
    s.toml_path.write_text('schema = 99\n[model]\nref = "x"\n')
    with pytest.raises(SessionError, match="schema 99 is not supported"):
        store.open("s1")


def test_cli_session_lookup_checks_the_model(tmp_path):
    from workbench.cli.args import open_named_session
    from workbench.core.errors import InputError

    store, _ = make(tmp_path)
    assert open_named_session(store, "new-one", "demo:smollm2") is None
    assert open_named_session(store, "s1", None).recipe.model.ref == "demo:minilm"
    with pytest.raises(InputError, match="--session s1: holds model demo:minilm; expected --model demo:minilm"):
        open_named_session(store, "s1", "demo:smollm2")
    with pytest.raises(InputError):
        open_named_session(store, "../evil", None)
