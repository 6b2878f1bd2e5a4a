"""Output-side faults (issue 11): transactional output folders, the lock, full and read-only
destinations, leftovers of killed runs, and resuming an interrupted scene bit-identically."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from rsvl_runtime import outputs as out
from rsvl_runtime import resume, transaction
from rsvl_runtime.scene import run_scene
from rsvl_runtime.transaction import OutputError

from ._runtime_rasters import (
    OPTICAL_SPEC,
    SAR_SPEC,
    LinearModel,
    optical_array,
    sar_array,
    write_tif,
)

NAMES = ["water", "forest", "urban", "crop", "bare"]
REPO = Path(__file__).resolve().parents[1]


def _run(model: Any, opt: Path, sar: Path | None, out_dir: Path, **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"class_names": NAMES, "colors": None, "optical_spec": OPTICAL_SPEC,
                            "sar_spec": SAR_SPEC, "tile": 64, "overlap": 0.25, "batch": 4,
                            "progress": False, "cog": False}
    args.update(kw)
    return run_scene(model, str(opt), None if sar is None else str(sar), out_dir, **args)


def _scene(folder: Path, h: int = 300, w: int = 200) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return (write_tif(folder / "optical.tif", optical_array(h, w)),
            write_tif(folder / "sar.tif", sar_array(h, w)))


def _bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _pixels_hash(path: Path) -> str:
    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read().tobytes()).hexdigest()


def _siblings(parent: Path, name: str = "out") -> list[str]:
    """Hidden temporaries/locks of the output folder ``name``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- transactional rerun
def test_failed_rerun_leaves_previous_result_byte_identical(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in")
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")  # not an output: kept across reruns
    before = _bytes(tmp_path / "out")
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        _run(LinearModel(5, fail_after=3, error=RuntimeError), opt, sar, tmp_path / "out")
    assert _bytes(tmp_path / "out") == before
    assert out.is_complete(tmp_path / "out")
    assert _siblings(tmp_path) == []  # no temporary folder, no lock left
    # a successful rerun replaces the result as a whole and keeps the user's file
    res = _run(LinearModel(5, seed=9), opt, sar, tmp_path / "out", write_scores=False)
    assert out.is_complete(tmp_path / "out") and res.out_dir == tmp_path / "out"
    names = set(_bytes(tmp_path / "out"))
    assert out.SCORES not in names  # not a stale scores.tif of the previous run
    assert "notes.txt" in names and _siblings(tmp_path) == []


def test_ctrl_c_without_checkpoint_leaves_previous_result(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in")
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    before = _bytes(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        _run(LinearModel(5, fail_after=2), opt, sar, tmp_path / "out")  # default: no checkpoint yet
    assert _bytes(tmp_path / "out") == before and _siblings(tmp_path) == []


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("overlap,batch,fail_after", [(0.25, 4, 7), (0.5, 3, 16), (0.0, 5, 4), (0.25, 1, 20)])
def test_interrupted_run_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               overlap: float, batch: int, fail_after: int) -> None:
    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)  # a checkpoint after every strip
    opt, sar = _scene(tmp_path / "in", 630, 150)
    full = LinearModel(5)
    _run(full, opt, sar, tmp_path / "full", overlap=overlap, batch=batch)
    with pytest.raises(KeyboardInterrupt):
        _run(LinearModel(5, fail_after=fail_after), opt, sar, tmp_path / "out", overlap=overlap, batch=batch)
    tmps = [p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvl-tmp-")]
    assert len(tmps) == 1 and (tmps[0] / resume.PROGRESS).is_file()  # the checkpoint is kept
    tmps[0].rename(tmp_path / f".out.rsvl-tmp-{_dead_pid()}")  # as if the run had been killed
    again = LinearModel(5)
    res = _run(again, opt, sar, tmp_path / "out", overlap=overlap, batch=batch)
    assert res.timings["resumed_at_row"] > 0
    assert sum(again.calls) < sum(full.calls)  # fewer tiles computed (the probe batch included)
    for name in (out.LABELS, out.SCORES):
        assert _pixels_hash(tmp_path / "out" / name) == _pixels_hash(tmp_path / "full" / name)
    a = json.loads((tmp_path / "out" / out.CLASSES).read_text())
    b = json.loads((tmp_path / "full" / out.CLASSES).read_text())
    assert a == b  # pixel counts and areas identical too
    assert _siblings(tmp_path) == []


def test_checkpoint_of_other_options_or_model_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)
    opt, sar = _scene(tmp_path / "in")
    for other in ({"overlap": 0.5}, {"model": LinearModel(5, seed=8)}):
        with pytest.raises(KeyboardInterrupt):
            _run(LinearModel(5, fail_after=4), opt, sar, tmp_path / "out")
        tmp = next(p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvl-tmp-"))
        tmp.rename(tmp_path / f".out.rsvl-tmp-{_dead_pid()}")
        model = other.pop("model", LinearModel(5))
        with caplog.at_level(logging.WARNING, logger="rsvl_runtime"):
            res = _run(model, opt, sar, tmp_path / "out", **other)
        assert res.timings["resumed_at_row"] == 0
        assert _siblings(tmp_path) == []
    assert "model's output changed" in caplog.text


def _child(opt: str, sar: str, out_dir: str) -> None:
    """Run in a subprocess by the SIGKILL test: a slow model, a checkpoint after every strip."""
    model = LinearModel(5)

    def slow(o: np.ndarray | None, s: np.ndarray | None) -> np.ndarray:
        time.sleep(0.3)
        return model(o, s)

    _run(slow, Path(opt), Path(sar), Path(out_dir))


def _next_strip(progress: Path) -> int:
    try:
        return int(json.loads(progress.read_text())["next_strip"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_mid_run_then_rerun_resumes(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in", 400, 200)
    full = LinearModel(5)
    _run(full, opt, sar, tmp_path / "full")
    _run(LinearModel(5), opt, sar, tmp_path / "out")  # a previous complete result
    before = _bytes(tmp_path / "out")
    code = f"from tests.test_faults_outputs import _child; _child({str(opt)!r}, {str(sar)!r}, {str(tmp_path / 'out')!r})"
    env = {**os.environ, "RSVL_CHECKPOINT_SECONDS": "0"}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    progress = tmp_path / f".out.rsvl-tmp-{child.pid}" / resume.PROGRESS
    deadline = time.monotonic() + 60
    while _next_strip(progress) < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _next_strip(progress) >= 5, "the child did not checkpoint its first strips"
    assert (tmp_path / ".out.rsvl.lock").exists()  # what a killed run leaves behind
    assert _bytes(tmp_path / "out") == before  # the killed rerun did not touch the old result
    again = LinearModel(5)
    res = _run(again, opt, sar, tmp_path / "out")
    assert res.timings["resumed_at_row"] > 0
    assert sum(again.calls) < sum(full.calls)  # resumed: fewer tiles computed
    assert _pixels_hash(tmp_path / "out" / out.LABELS) == _pixels_hash(tmp_path / "full" / out.LABELS)
    assert _pixels_hash(tmp_path / "out" / out.SCORES) == _pixels_hash(tmp_path / "full" / out.SCORES)
    assert _siblings(tmp_path) == []  # stale lock taken over and released, checkpoint consumed


# ----------------------------------------------------------------------------- full / read-only disks
def test_enospc_in_writer_is_one_clear_error_and_no_partial_files(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    opt, sar = _scene(tmp_path / "in", 700, 150)
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    before = _bytes(tmp_path / "out")
    real_write = out.GeoTiffRowWriter._write
    calls = {"n": 0}

    def full_disk(self: out.GeoTiffRowWriter, n: int) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real_write(self, n)

    monkeypatch.setattr(out.GeoTiffRowWriter, "_write", full_disk)
    model = LinearModel(5)
    with pytest.raises(OutputError) as e:
        _run(model, opt, sar, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(f"no space left on device while writing {tmp_path / 'out'}") and "\n" not in msg
    assert "free some space" in msg
    assert sum(model.calls) < 4 * 14  # stopped at once, not after the whole scene
    assert _bytes(tmp_path / "out") == before and _siblings(tmp_path) == []


def test_disk_filling_up_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's free-space probe (GDAL only logs ENOSPC and carries on) stops the run."""
    opt, sar = _scene(tmp_path / "in", 700, 150)
    monkeypatch.setattr(out, "disk_full", lambda folder: True)
    model = LinearModel(5)
    with pytest.raises(OutputError, match="no space left on device while writing .*out"):
        _run(model, opt, sar, tmp_path / "out")
    assert sum(model.calls) < 4 * 14 and not (tmp_path / "out").exists() and _siblings(tmp_path) == []


@pytest.fixture()
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the mocked ENOSPC tests cover the writer)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_disk(tmp_path: Path, tiny_tmpfs: Path) -> None:
    opt = write_tif(tmp_path / "noise.tif", np.random.default_rng(0).integers(1, 255, (3, 1500, 1500), np.uint8))
    with pytest.raises(OutputError, match=f"no space left on device while writing {tiny_tmpfs / 'out'}"):
        _run(LinearModel(5), opt, None, tiny_tmpfs / "out", overlap=0.0, batch=64)
    assert list(tiny_tmpfs.iterdir()) == []  # nothing left on the full disk


def test_free_space_estimate_refuses_before_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opt, sar = _scene(tmp_path / "in")
    monkeypatch.setattr(transaction.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    model = LinearModel(5)
    with pytest.raises(OutputError) as e:
        _run(model, opt, sar, tmp_path / "out")
    assert str(e.value).startswith(f"not enough free space for {tmp_path / 'out'}: the outputs need about ")
    assert "0.0 MB free" in str(e.value) and "--no-scores" in str(e.value)
    assert model.calls == [] and _siblings(tmp_path) == [] and not (tmp_path / "out").exists()
    need = out.estimate_output_bytes(200, 300, 6)
    assert need == int(200 * 300 * 6 * out.ESTIMATE_FRACTION) + (1 << 20)


def test_read_only_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opt, sar = _scene(tmp_path / "in")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root: chmod does not block writes; a read-only mount does
        real_open = transaction.os.open

        def erofs(path: Any, *a: Any, **k: Any) -> int:
            if str(path).startswith(str(parent)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(transaction.os, "open", erofs)
    try:
        with pytest.raises(OutputError) as e:
            _run(LinearModel(5), opt, sar, parent / "out")
    finally:
        parent.chmod(0o755)
    msg = str(e.value)
    assert msg.startswith(f"cannot write the output folder {parent / 'out'}: ")
    assert ("read-only file system" in msg or "permission denied" in msg) and "choose a writable --out" in msg
    assert list(parent.iterdir()) == []


# ----------------------------------------------------------------------------- lock and leftovers
def test_concurrent_run_refused_by_the_lock(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.rsvl.lock").write_text(json.dumps({"pid": holder.pid}))
        model = LinearModel(5)
        with pytest.raises(OutputError) as e:
            _run(model, opt, sar, tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'out'} is being written by another rsvl run (pid {holder.pid}")
    assert "wait for it to finish or choose another --out" in msg
    assert model.calls == [] and (tmp_path / ".out.rsvl.lock").exists()  # the holder's lock untouched


def test_two_runs_in_one_process_share_nothing(tmp_path: Path) -> None:
    """The lock is held during the run: a run started from inside predict_fn is refused."""
    opt, sar = _scene(tmp_path / "in")
    seen: list[str] = []
    model = LinearModel(5)

    def nested(o: np.ndarray | None, s: np.ndarray | None) -> np.ndarray:
        if not seen:
            with pytest.raises(OutputError) as e:
                _run(LinearModel(5), opt, sar, tmp_path / "out")
            seen.append(str(e.value))
        return model(o, s)

    _run(nested, opt, sar, tmp_path / "out")
    assert f"pid {os.getpid()}" in seen[0] and out.is_complete(tmp_path / "out")


def test_stale_lock_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opt, sar = _scene(tmp_path / "in")
    dead = _dead_pid()
    (tmp_path / ".out.rsvl.lock").write_text(json.dumps({"pid": dead}))
    with caplog.at_level(logging.WARNING, logger="rsvl_runtime"):
        _run(LinearModel(5), opt, sar, tmp_path / "out")
    assert f"taking over the stale lock {tmp_path / '.out.rsvl.lock'} of pid {dead}" in caplog.text
    assert out.is_complete(tmp_path / "out") and _siblings(tmp_path) == []


def test_leftovers_of_dead_runs_are_cleaned_live_ones_kept(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in")
    dead = _dead_pid()
    junk = tmp_path / f".out.rsvl-tmp-{dead}"
    junk.mkdir()
    (junk / ".labels.tif.x1.tmp").write_bytes(b"partial")
    live = tmp_path / f".out.rsvl-tmp-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".other.rsvl-tmp-{dead}"  # another output folder's: not ours to touch
    other.mkdir()
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    assert not junk.exists() and live.exists() and other.exists()
    assert out.is_complete(tmp_path / "out")


def test_result_restored_when_killed_between_the_two_renames(tmp_path: Path) -> None:
    """Without RENAME_EXCHANGE the swap is two renames; a kill between them is repaired."""
    opt, sar = _scene(tmp_path / "in")
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    before = _bytes(tmp_path / "out")
    (tmp_path / "out").rename(tmp_path / f".out.rsvl-old-{_dead_pid()}")
    with pytest.raises(RuntimeError):
        _run(LinearModel(5, fail_after=1, error=RuntimeError), opt, sar, tmp_path / "out")
    assert _bytes(tmp_path / "out") == before and _siblings(tmp_path) == []


def test_swap_without_rename_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opt, sar = _scene(tmp_path / "in")
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    (tmp_path / "out" / "sar_aligned.tif").write_bytes(b"aligned")
    monkeypatch.setattr(transaction, "_exchange", lambda a, b: False)
    _run(LinearModel(5, seed=4), opt, sar, tmp_path / "out")
    assert out.is_complete(tmp_path / "out") and (tmp_path / "out" / "sar_aligned.tif").read_bytes() == b"aligned"
    assert _siblings(tmp_path) == []


# ----------------------------------------------------------------------------- end to end
def test_bundle_resume_and_lock_end_to_end(tiny_bundle: Path, synthetic_scene: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from rsvl_runtime.cli import main
    from rsvl_runtime.segmenter import Segmenter

    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)
    seg = Segmenter.load(tiny_bundle, cache_dir=tmp_path / "cache")
    optical, sar = str(synthetic_scene.optical), str(synthetic_scene.sar)
    seg.predict_raster(optical, sar, tmp_path / "full", progress=False)
    real = seg.predict_logits
    calls = {"n": 0}

    def interrupted(o: np.ndarray | None, s: np.ndarray | None = None) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(o, s)

    monkeypatch.setattr(seg, "predict_logits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seg.predict_raster(optical, sar, tmp_path / "out", progress=False)
    monkeypatch.setattr(seg, "predict_logits", real)
    tmp = next(p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvl-tmp-"))
    tmp.rename(tmp_path / f".out.rsvl-tmp-{_dead_pid()}")
    res = seg.predict_raster(optical, sar, tmp_path / "out", progress=False)
    assert res.timings["resumed_at_row"] > 0
    assert _pixels_hash(tmp_path / "out" / out.LABELS) == _pixels_hash(tmp_path / "full" / out.LABELS)
    # the CLI prints a held lock as one line and exits 2
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.rsvl.lock").write_text(json.dumps({"pid": holder.pid}))
        code = main(["--bundle", str(tiny_bundle), "--optical", optical, "--sar", sar,
                     "--out", str(tmp_path / "out"), "--quiet"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("rsvl-infer: error: ") and f"pid {holder.pid}" in err[-1]
    assert out.is_complete(tmp_path / "out")
