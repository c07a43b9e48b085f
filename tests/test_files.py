"""Writes that matter (core.files): atomic, with the file's mode kept and the folder synced;
uploads stored by content without a shared temporary name."""

from __future__ import annotations

import hashlib
import os
import stat
import threading

from core.data import uploads
from core.files import write_text_atomic


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_atomic_write_keeps_the_mode_and_a_new_file_gets_the_umasks(tmp_path):
    old_mask = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.json"
        write_text_atomic(fresh, "{}")
        assert mode(fresh) == 0o640  # 0o666 under umask 027, not mkstemp's 0o600
        shared = tmp_path / "shared.json"
        shared.write_text("old")
        shared.chmod(0o664)
        write_text_atomic(shared, "new")
        assert shared.read_text() == "new" and mode(shared) == 0o664
    finally:
        os.umask(old_mask)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_atomic_write_syncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text_atomic(tmp_path / "state.json", "{}")
    assert synced == [False, True]  # the file's data, then the folder holding the rename


def test_two_uploads_of_one_file_at_once_store_it_whole(tmp_path, monkeypatch):
    """Both uploads copy at the same moment (held together by a barrier): each writes its own
    temporary file, and the stored file is the whole upload."""
    source = tmp_path / "big.jsonl"
    source.write_bytes(b'{"text": "row"}\n' * 400_000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    together = threading.Barrier(2)
    copyfile = uploads.shutil.copyfile

    def copy_together(src, dst):
        together.wait(10)
        return copyfile(src, dst)

    monkeypatch.setattr(uploads.shutil, "copyfile", copy_together)
    stored, errors = [], []

    def upload():
        try:
            stored.append(uploads.store_upload(source, tmp_path / "datasets"))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(stored) == 2 and stored[0] == stored[1]
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == digest
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [f"{digest}.jsonl"]
