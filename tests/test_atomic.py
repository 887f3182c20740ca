"""morphllr.atomic on its own: outputs appear only complete, inputs are never written, one writer at a time.

The command-level view (every command refuses, locks and cleans the same way) is tests/cli/test_outputs.py;
here the library mechanism itself is pinned down: temporary name + rename, what an error leaves
behind, the refusals, the lock against a second process and the folder variant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from morphllr.atomic import atomic_dir, atomic_file, claim_output, claim_outputs, umask
from morphllr.errors import MorphllrError


def _hidden(folder: Path) -> list[str]:
    """Names of the hidden entries (temporaries, locks, set-aside folders) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------- atomic_file
def test_a_new_file_appears_only_when_complete(tmp_path):
    out = tmp_path / "result.txt"
    with atomic_file(out) as tmp:
        assert not out.exists()  # nothing under the final name while the work runs
        assert tmp.parent == out.parent and tmp.name.startswith(".result.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("first half ")
        assert not out.exists()
        with open(tmp, "a") as fh:
            fh.write("second half")
        inode = os.stat(tmp).st_ino
    assert out.read_text() == "first half second half"
    assert os.stat(out).st_ino == inode  # renamed, not copied: readers can never see a partial file
    assert _hidden(tmp_path) == []  # neither the temporary nor the lock file stays


def test_an_existing_file_keeps_its_old_content_until_the_rename(tmp_path):
    out = tmp_path / "result.txt"
    out.write_text("old")
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text("new")
        assert out.read_text() == "old"
    assert out.read_text() == "new"
    assert _hidden(tmp_path) == []


def test_an_existing_file_is_refused_without_overwrite_before_any_work(tmp_path):
    out = tmp_path / "result.txt"
    out.write_text("old")
    entered = False
    with pytest.raises(MorphllrError, match="already exists; pass --overwrite"):
        with atomic_file(out, overwrite=False):
            entered = True
    assert not entered
    assert out.read_text() == "old"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failure_mid_write_leaves_the_old_file_or_nothing(tmp_path, existed):
    out = tmp_path / "result.h5"
    if existed:
        out.write_bytes(b"complete old result")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_file(out) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk on fire")
    if existed:
        assert out.read_bytes() == b"complete old result"
    else:
        assert not out.exists()
    assert _hidden(tmp_path) == []  # the partial temporary is deleted too


def test_a_keyboard_interrupt_mid_write_leaves_no_partial_file(tmp_path):
    out = tmp_path / "result.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(out) as tmp:
            tmp.write_text("id,logp\n1,")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_modes_follow_the_umask(tmp_path):
    mask = umask()
    with atomic_file(tmp_path / "f") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner").write_text("x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    with atomic_file(tmp_path / "g", mode=0o640) as tmp:
        tmp.write_text("x")
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o640


def test_missing_parent_folders_are_made_and_removed_again_on_failure(tmp_path):
    out = tmp_path / "a" / "b" / "result.txt"
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            assert tmp.parent == out.parent
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # the folders the claim created went with the failed run
    with atomic_file(out) as tmp:
        tmp.write_text("ok")
    assert out.read_text() == "ok"


# ---------------------------------------------------------------------- inputs are never outputs
def test_the_input_itself_is_refused_even_with_overwrite(tmp_path):
    data = tmp_path / "obs.h5"
    data.write_bytes(b"precious")
    with pytest.raises(MorphllrError, match="is also an input of this command"):
        with claim_output(data, inputs=[data], overwrite=True):
            pass
    assert data.read_bytes() == b"precious"


def test_an_input_reached_another_way_is_refused(tmp_path):
    data = tmp_path / "obs.h5"
    data.write_bytes(b"precious")
    link = tmp_path / "link.h5"
    link.symlink_to(data)
    hard = tmp_path / "hard.h5"
    os.link(data, hard)
    for out, inputs in [(link, [data]), (data, [link]), (hard, [data]), (tmp_path / "obs.h5", [f"{data}:images"]),
                        (data, [str(tmp_path / "*.h5")])]:
        with pytest.raises(MorphllrError, match="is also an input"):
            with claim_output(out, inputs=inputs, overwrite=True):
                pass
    assert data.read_bytes() == b"precious"


def test_a_folder_output_may_not_hold_an_input_nor_lie_inside_an_input_folder(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.fits").write_bytes(b"x")
    with pytest.raises(MorphllrError, match="holds the input"):
        with claim_output(tmp_path, inputs=[inputs / "a.fits"], overwrite=True, kind="dir"):
            pass
    with pytest.raises(MorphllrError, match="lies inside the input folder"):
        with claim_output(inputs / "report", inputs=[inputs], kind="dir"):
            pass
    assert (inputs / "a.fits").read_bytes() == b"x"


def test_kinds_and_duplicate_outputs_are_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MorphllrError, match="is a folder, but a file is expected"):
        with claim_output(tmp_path / "folder", overwrite=True):
            pass
    with pytest.raises(MorphllrError, match="is a file, but a folder is expected"):
        with claim_output(tmp_path / "file", overwrite=True, kind="dir"):
            pass
    with pytest.raises(MorphllrError, match="is a file, not a folder"):
        with claim_output(tmp_path / "file" / "inner.h5"):
            pass
    with pytest.raises(MorphllrError, match="same place as --out"):
        with claim_outputs([("--out", tmp_path / "a.csv"), ("--maps", tmp_path / "a.csv")]):
            pass
    with pytest.raises(MorphllrError, match="not found"):
        with claim_output(tmp_path / "missing.h5", existing="update"):
            pass


# ---------------------------------------------------------------------- the lock
_CLAIMER = textwrap.dedent("""
    import sys, time
    from morphllr.atomic import claim_output
    from morphllr.errors import MorphllrError
    try:
        with claim_output(sys.argv[1]):
            print("claimed", flush=True)
            time.sleep(float(sys.argv[2]))
    except MorphllrError as exc:
        print(f"refused: {exc}", flush=True)
        sys.exit(2)
""")


def _claimer(out: Path, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CLAIMER, str(out), str(hold_s)], stdout=subprocess.PIPE,
                            text=True)


def test_the_lock_refuses_a_second_claimer_at_once_and_frees_at_the_end(tmp_path):
    out = tmp_path / "result.h5"
    with claim_output(out):
        assert (tmp_path / ".result.h5.lock").read_text().strip() == str(os.getpid())
        start = time.monotonic()
        second = _claimer(out, 0)
        text, _ = second.communicate(timeout=60)
        assert second.returncode == 2, text
        assert time.monotonic() - start < 30  # refused, not waited for
        assert "another morphllr run" in text and f"(pid {os.getpid()})" in text and "wait for it" in text
    assert _hidden(tmp_path) == []  # lock file removed
    third = _claimer(out, 0)
    text, _ = third.communicate(timeout=60)
    assert third.returncode == 0 and "claimed" in text


def test_a_sigkilled_holder_frees_the_lock_and_its_temporaries_are_cleaned(tmp_path):
    out = tmp_path / "result.h5"
    holder = _claimer(out, 120)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        stale = [tmp_path / ".result.h5.abcd1234.tmp", tmp_path / ".result.h5.efgh5678.old"]
        stale[0].write_bytes(b"half-written by the dead run")
        stale[1].mkdir()
        neighbour = tmp_path / ".result.h5.more.abcd1234.tmp"  # belongs to output "result.h5.more"
        neighbour.write_bytes(b"not ours")
        with pytest.raises(MorphllrError, match="another morphllr run"):
            with claim_output(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert (tmp_path / ".result.h5.lock").exists()  # a SIGKILLed run cannot remove it ...
    with claim_output(out):  # ... but the kernel dropped its lock
        assert not any(p.exists() for p in stale)  # what the dead run left for this output is gone
        assert neighbour.exists()  # another output's temporary is not touched
    assert _hidden(tmp_path) == [neighbour.name]


def test_claims_are_reentrant_within_a_thread(tmp_path):
    out = tmp_path / "result.h5"
    with claim_output(out):
        with atomic_file(out) as tmp:  # the library function claims again under the command's claim
            tmp.write_text("done")
        assert (tmp_path / ".result.h5.lock").exists()  # still held by the outer claim
    assert out.read_text() == "done"
    assert _hidden(tmp_path) == []


# ---------------------------------------------------------------------- atomic_dir
def test_a_new_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "report"
    with atomic_dir(out) as tmp:
        assert not out.exists()
        assert tmp.is_dir() and tmp.parent == tmp_path and tmp.name.startswith(".report.")
        (tmp / "figures").mkdir()
        (tmp / "figures" / "a.png").write_bytes(b"png")
        (tmp / "index.html").write_text("<html>")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["figures", "figures/a.png", "index.html"]
    assert _hidden(tmp_path) == []


def test_an_existing_folder_is_refused_without_overwrite_and_replaced_whole_with_it(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old figure")
    with pytest.raises(MorphllrError, match="already exists"):
        with atomic_dir(out):
            pass
    assert (out / "stale.png").exists()
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "index.html").write_text("new")
        assert (out / "stale.png").read_bytes() == b"old figure"  # the old folder stays whole until the swap
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # nothing of the old folder is mixed in
    assert _hidden(tmp_path) == []  # no set-aside .old folder, no temporary


def test_a_failing_folder_write_keeps_the_old_folder_and_removes_the_temporary(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    (out / "model.json").write_text("old model")
    with pytest.raises(ValueError, match="training diverged"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "model.json").write_text("half")
            raise ValueError("training diverged")
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]
    assert (out / "model.json").read_text() == "old model"
    assert _hidden(tmp_path) == []


def test_a_folder_output_may_not_hold_the_current_folder(tmp_path, monkeypatch):
    out = tmp_path / "work"
    (out / "inner").mkdir(parents=True)
    monkeypatch.chdir(out / "inner")
    with pytest.raises(MorphllrError, match="holds the current folder"):
        with atomic_dir(out, overwrite=True):
            pass
    assert (out / "inner").is_dir()
