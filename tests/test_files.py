"""Result files are written whole, readable by others, and leave no temporary file behind."""

import os
import stat

import pytest

from core.files import write_text_atomically


def test_write_replaces_whole_file_with_shared_permissions(tmp_path):
    target = tmp_path / "runs" / "metrics.json"
    write_text_atomically(target, "first\n")
    write_text_atomically(target, "second\n")
    assert target.read_text() == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "answers.json"
    write_text_atomically(target, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(target, "bad \udcff surrogate")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["answers.json"]
