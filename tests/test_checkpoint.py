"""Which checkpoint a resume takes: the newest complete step_N on disk, whatever `latest` says.

Pure file-system tests (no model): a kill -9 can land between renaming step_N into place and writing
`latest`, or while a step dir is being written or replaced; each such state is built by hand here.
"""

import json

import pytest

from selfredteam.checkpoint import (
    LATEST,
    find_checkpoint,
    has_checkpoint,
    newest_checkpoint,
    resumed_run_dir,
)
from selfredteam.errors import UserError
from selfredteam.fsutil import atomic_dir


def _step(run, n, complete=True):
    d = run / "checkpoints" / f"step_{n}"
    (d / "adapter").mkdir(parents=True)
    if complete:
        (d / "state.json").write_text(json.dumps({"step": n}))
    return d


def _latest(run, text):
    (run / "checkpoints" / LATEST).write_text(text)


def test_latest_never_written_takes_the_newest_step(tmp_path):
    _step(tmp_path, 1)
    newest = _step(tmp_path, 2)
    heard = []
    assert find_checkpoint(tmp_path, heard.append) == newest
    assert heard and "names nothing" in heard[0] and "step_2" in heard[0]


def test_stale_latest_is_overruled_by_a_newer_complete_step(tmp_path):
    _step(tmp_path, 2)
    newest = _step(tmp_path, 10)  # numeric order, not string order ("step_10" < "step_2")
    _latest(tmp_path, "step_2")
    heard = []
    assert find_checkpoint(tmp_path, heard.append) == newest
    assert "step_2" in heard[0] and "step_10" in heard[0]


def test_latest_naming_a_deleted_dir_falls_back_to_what_is_on_disk(tmp_path):
    older = _step(tmp_path, 2)
    _latest(tmp_path, "step_4")
    assert find_checkpoint(tmp_path) == older


def test_torn_temp_dirs_and_incomplete_steps_are_ignored(tmp_path):
    done = _step(tmp_path, 2)
    _latest(tmp_path, "step_2")
    torn = tmp_path / "checkpoints" / ".step_4-x1y2"  # atomic_dir's temp dir, killed mid-write
    torn.mkdir()
    (torn / "state.json").write_text(json.dumps({"step": 4}))
    _step(tmp_path, 6, complete=False)  # no state.json: never renamed into place whole
    (tmp_path / "checkpoints" / "step_x").mkdir()
    heard = []
    assert find_checkpoint(tmp_path, heard.append) == done
    assert heard == []  # latest agrees with what was taken: nothing to say


def test_a_checkpoints_dir_or_a_step_dir_are_accepted(tmp_path):
    _step(tmp_path, 1)
    newest = _step(tmp_path, 3)
    assert find_checkpoint(tmp_path / "checkpoints") == newest
    assert find_checkpoint(tmp_path / "checkpoints" / "step_1") == tmp_path / "checkpoints" / "step_1"


def test_a_resume_without_out_continues_in_its_own_run(tmp_path):
    """`train --resume RUN` (what a stopped run prints) writes the remaining steps into RUN, whichever
    form of the path is given; from an older checkpoint it asks for --out instead of replacing the
    later steps' metric rows."""
    run = tmp_path / "demo"
    _step(run, 5)
    newest = _step(run, 10)
    for path in (run, run / "checkpoints", newest):
        assert resumed_run_dir(path) == (run, newest)
    with pytest.raises(UserError, match="not the newest checkpoint.*--out NEW_DIR"):
        resumed_run_dir(run / "checkpoints" / "step_5")
    loose = tmp_path / "copied_step"  # a step dir copied out of its run: its own parent is the run
    (loose / "adapter").mkdir(parents=True)
    (loose / "state.json").write_text(json.dumps({"step": 3}))
    assert resumed_run_dir(loose) == (tmp_path, loose)


def test_no_complete_checkpoint_is_a_clear_error(tmp_path):
    assert not has_checkpoint(tmp_path)
    _step(tmp_path, 2, complete=False)
    _latest(tmp_path, "step_2")
    with pytest.raises(UserError, match="No complete checkpoint"):
        find_checkpoint(tmp_path)
    assert newest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(UserError, match="does not exist"):
        find_checkpoint(tmp_path / "missing")


def test_atomic_dir_replaces_a_dir_whole_and_leaves_no_temp(tmp_path):
    target = _step(tmp_path, 2)
    with atomic_dir(target) as tmp:
        (tmp / "state.json").write_text(json.dumps({"step": 2, "new": True}))
    assert json.loads((target / "state.json").read_text())["new"] is True
    assert not (target / "adapter").exists()  # the old dir went whole, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["step_2"]


def test_atomic_dir_failing_midway_keeps_the_old_dir(tmp_path):
    target = _step(tmp_path, 2)
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "state.json").write_text("{}")
        raise RuntimeError("killed while writing")
    assert json.loads((target / "state.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["step_2"]
