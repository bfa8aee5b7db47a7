"""curation.store: whole-or-nothing writes and finished markers (the rules every part resumes by)."""
import polars as pl
import pytest

from curation import store


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    store.write_json({"a": 1}, path)

    def broken(self, data):  # the write dies half-way (disk full, a kill)
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "write_bytes", broken)
    with pytest.raises(OSError):
        store.write_json({"a": 2}, path)
    monkeypatch.undo()
    assert store.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_the_same_rows_give_the_same_parquet_bytes(tmp_path):
    df = pl.DataFrame({"id": ["a", "b"], "n": [1, 2]})
    store.write_parquet(df, tmp_path / "1.parquet")
    store.write_parquet(df, tmp_path / "2.parquet")
    assert store.file_digest(tmp_path / "1.parquet") == store.file_digest(tmp_path / "2.parquet")
    assert pl.read_parquet(tmp_path / "1.parquet").equals(df)


def test_a_marker_vouches_for_its_key_only(tmp_path):
    assert not store.finished(tmp_path)
    store.mark_finished(tmp_path, "fp-1", {"kept": 3})
    assert store.finished(tmp_path) and store.finished(tmp_path, "fp-1")
    assert not store.finished(tmp_path, "fp-2")
    assert store.finished_facts(tmp_path) == {"kept": 3}


def test_a_marker_written_by_an_older_pond_still_reads(tmp_path):
    (tmp_path / store.MARKER).write_text("fp-old\n")  # the runner's DONE: the fingerprint alone
    assert store.finished(tmp_path, "fp-old") and store.finished_facts(tmp_path) == {}


def test_read_json_of_a_missing_or_broken_file_is_empty(tmp_path):
    (tmp_path / "broken.json").write_text('{"a": ')
    assert store.read_json(tmp_path / "missing.json") == {} and store.read_json(tmp_path / "broken.json") == {}


def test_two_works_in_one_folder_have_their_own_markers(tmp_path):
    store.mark_finished(tmp_path, store.key_of({"adapter": "a", "rows": 40}), name="eval.DONE")
    assert store.finished(tmp_path, store.key_of({"rows": 40, "adapter": "a"}), name="eval.DONE")
    assert not store.finished(tmp_path, store.key_of({"adapter": "b", "rows": 40}), name="eval.DONE")
    assert not store.finished(tmp_path)  # the folder's own marker is another work's
