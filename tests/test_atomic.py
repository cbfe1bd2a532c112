import json
import os

import pytest

from raysemi import atomic


class Boom(Exception):
    pass


def test_files_are_written_whole(tmp_path):
    atomic.write_text(tmp_path / "a" / "b.txt", "héllo")  # the folder is created
    atomic.write_bytes(tmp_path / "c.bin", b"\x00\x01")
    atomic.write_lines(tmp_path / "d.txt", ["x 1", "y 2"])
    atomic.write_json(tmp_path / "e.json", {"miou": 0.5})
    assert (tmp_path / "a" / "b.txt").read_bytes() == "héllo".encode()
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "d.txt").read_text() == "x 1\ny 2\n"
    assert (tmp_path / "e.json").read_text() == '{\n "miou": 0.5\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.bin", "d.txt", "e.json"]  # no temporaries


def test_a_file_is_created_with_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(path, {"step": 1})
    with pytest.raises(Boom), atomic.open_atomic(path) as handle:
        handle.write(b'{"step": 2, "half')
        raise Boom
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json(path, [1, 2])
    with pytest.raises(TypeError):
        atomic.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == [1, 2] and len(list(tmp_path.iterdir())) == 1


def test_a_staging_folder_is_renamed_into_place(tmp_path):
    final = tmp_path / "out"
    with atomic.staging_dir(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".tmp-out-")
        (staging / "a.txt").write_text("1")
        assert not final.exists()  # nothing shows before the block ends
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "a.txt").read_text() == "1"


def test_a_failed_staging_folder_leaves_nothing(tmp_path):
    with pytest.raises(Boom), atomic.staging_dir(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("1")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_a_failed_replacement_keeps_the_old_folder(tmp_path):
    final = tmp_path / "out"
    with atomic.staging_dir(final) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic.staging_dir(final, replace=True) as staging:
        (staging / "new.txt").write_text("new")
        raise Boom
    assert [p.name for p in final.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic.staging_dir(final, replace=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_a_folder_another_writer_finished_is_not_overwritten(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "theirs.txt").write_text("theirs")
    with pytest.raises(OSError), atomic.staging_dir(final) as staging:
        (staging / "ours.txt").write_text("ours")
    assert [p.name for p in final.iterdir()] == ["theirs.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_folder_is_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic.staging_dir(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("1")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]


def test_leftovers_of_killed_writers_are_removed_by_name(tmp_path):
    for name in (".tmp-step_00000002-ab12", ".tmp-step_00000004-cd34", ".tmp-best-ef56", "step_00000002"):
        (tmp_path / name).mkdir()
    assert atomic.remove_staging_leftovers(tmp_path, "step_*") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-best-ef56", "step_00000002"]
