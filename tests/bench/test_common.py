"""What the benchmarks share: where a run's JSON goes (--out)."""

from __future__ import annotations

import pytest

from bench.common import result_path


def test_out_is_a_file_or_a_folder_and_checked_before_work(tmp_path, monkeypatch):
    assert result_path(None, "2026-11-23-cpu") is None
    assert result_path(str(tmp_path / "r.json"), "x") == tmp_path / "r.json"
    # a folder, named with a trailing slash (made here) or already there: <stem>.json inside, stem slugged
    assert result_path(f"{tmp_path}/new/", "2026-11-23-NVIDIA H100 80GB HBM3-data") == \
        tmp_path / "new" / "2026-11-23-nvidia-h100-80gb-hbm3-data.json"
    assert (tmp_path / "new").is_dir()
    assert result_path(str(tmp_path), "2026-11-23-cpu-2core-data") == tmp_path / "2026-11-23-cpu-2core-data.json"
    monkeypatch.chdir(tmp_path)
    assert result_path("auto", "d").resolve() == tmp_path / "bench" / "results" / "d.json"
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit, match=r"^--out .*/f/sub/: cannot make the folder .*/f/sub"):
        result_path(f"{tmp_path}/f/sub/", "x")
