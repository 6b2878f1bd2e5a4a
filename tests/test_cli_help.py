"""The CLIs as a user meets them: ``--help`` shows defaults, subcommands, the --vocab-file formats
and the cache folder; every CLI takes -v/-q; ``rsvl-export`` turns third-party warnings into
debug log lines and shows progress during a long step; error lines quote no library boilerplate
("See previous exception for details.") and no deleted temporary path."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rsvl_runtime.backends.tensorrt.profiles import final_bundle_paths, trtexec_command
from rsvl_runtime.cli_common import run_guarded
from rsvl_runtime.logs import error_text, setup_cli_logging

from ._runtime_rasters import optical_array, write_tif


def _infer_parser() -> argparse.ArgumentParser:
    from rsvl_runtime.cli import build_parser

    return build_parser()


def _batch_parser() -> argparse.ArgumentParser:
    from rsvl_runtime.batch_cli import build_parser

    return build_parser()


def _export_parser() -> argparse.ArgumentParser:
    from rsvl_export.cli import export_parser

    return export_parser()


def _triton_parser() -> argparse.ArgumentParser:
    from rsvl_export.triton_cli import build_parser

    return build_parser()


def _train_parser() -> argparse.ArgumentParser:
    from rsvl_train.cli import build_parser

    return build_parser()


def _bench_parser() -> argparse.ArgumentParser:
    from benchmarks.cli import build_parser

    return build_parser()


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "rsvl-infer": _infer_parser, "rsvl-batch": _batch_parser, "rsvl-export": _export_parser,
    "rsvl-export triton": _triton_parser, "rsvl-train": _train_parser, "rsvl-bench": _bench_parser}
#: The smallest valid command line of each parser (required flags / positionals).
REQUIRED = {"rsvl-infer": ["--bundle", "b", "--out", "o"], "rsvl-batch": ["--bundle", "b", "--out", "o", "--inputs", "i"],
            "rsvl-export": [], "rsvl-export triton": ["b", "r"], "rsvl-train": [], "rsvl-bench": []}


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # wrapping-independent


@pytest.mark.parametrize("prog,expected", [
    ("rsvl-infer", ["--backend {auto,", "(default: auto)", "(default: 0.0)"]),
    ("rsvl-batch", ["(default: auto)"]),
    ("rsvl-export", ["(default: 32)", "(default: 256)", "(default: fp16)", "(default: 18)", "(default: tsmnet-tiny)"]),
    ("rsvl-export triton", ["(default: hardlink)", "(default: 1)"]),
    ("rsvl-train", ["-v, --verbose debug logging", "-q, --quiet only warnings and errors"]),
    ("rsvl-bench", ["(default: tsmnet-tiny)"]),
])
def test_help_shows_defaults(prog: str, expected: list[str]) -> None:
    text = _help(PARSERS[prog]())
    for e in expected:
        assert e in text, f"{prog} --help lacks {e!r}"
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


def test_formatter_default_rules() -> None:
    from rsvl_runtime.cli_common import HelpFormatter

    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.002, help="learning rate (default 2e-3)")
    p.add_argument("--name", default=None, help="a name")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--set", action="append", default=[], help="overrides")
    text = _help(p)
    assert "--epochs EPOCHS default: 8" in text and "learning rate (default 2e-3) --name" in text
    assert "a name --flag" in text and "a flag --set" in text and text.endswith("overrides")


def test_help_lists_subcommands() -> None:
    infer = _infer_parser().format_help()
    assert "\ncommands:\n  rsvl-infer batch " in infer
    assert infer.startswith("usage: rsvl-infer --bundle DIR") and "\n       rsvl-infer batch --bundle DIR" in infer
    export = _export_parser().format_help()
    assert "\n       rsvl-export {inspect,rebuild-engine,triton} ..." in export
    for cmd in ("inspect", "rebuild-engine", "triton"):
        assert f"\n  rsvl-export {cmd} " in export


@pytest.mark.parametrize("prog", ["rsvl-infer", "rsvl-batch", "rsvl-export"])
def test_help_documents_cache(prog: str) -> None:
    text = PARSERS[prog]().format_help()
    for word in ("$RSVL_CACHE_DIR", "$XDG_CACHE_HOME/rsvl", "~/.cache/rsvl", "vocab/", "bundles/", "tensorrt-rtx/",
                 "trt_timing.cache"):
        assert word in text


def test_vocab_file_formats_documented_are_the_ones_loaded(tmp_path: Path) -> None:
    """The formats --help shows are what rsvl_runtime.vocabulary.load_vocabulary_file reads."""
    from rsvl_runtime.vocabulary import load_vocabulary_file

    text = _infer_parser().format_help()
    assert "vocabulary files (--vocab-file):" in text
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["water, lake, river", "building"]))
    objs = tmp_path / "objs.json"
    objs.write_text(json.dumps([{"name": "water", "synonyms": ["lake", "river"], "color": [0, 90, 200]},
                                {"name": "building"}]))
    txt = tmp_path / "classes.txt"
    txt.write_text("water, lake, river\nbuilding   # roofs included\n")
    for p in (names, objs, txt):
        classes = load_vocabulary_file(p)
        assert [c.name for c in classes] == ["water", "building"]
        assert classes[0].synonyms == ("lake", "river")
    assert load_vocabulary_file(objs)[0].color == (0, 90, 200)
    assert '["water, lake, river", "building"]' in text and '"color": [0, 90, 200]' in text


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_verbose_and_quiet_accepted(prog: str) -> None:
    parser = PARSERS[prog]()
    for flags, verbose, quiet in ((["-v"], True, False), (["--verbose"], True, False), (["-q"], False, True),
                                  (["--quiet"], False, True), ([], False, False)):
        args = parser.parse_args([*REQUIRED[prog], *flags])
        assert (args.verbose, args.quiet) == (verbose, quiet)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([*REQUIRED[prog], "-v", "-q"])
    assert e.value.code == 2


def test_verbosity_sets_log_levels() -> None:
    rsvl = logging.getLogger("rsvl")
    try:
        setup_cli_logging(argparse.Namespace(verbose=False, quiet=True))
        assert rsvl.level == logging.WARNING
        setup_cli_logging(argparse.Namespace(verbose=True, quiet=False))
        assert rsvl.level == logging.DEBUG
        setup_cli_logging(argparse.Namespace(verbose=False, quiet=False))
        assert rsvl.level == logging.INFO
    finally:
        setup_cli_logging(argparse.Namespace(verbose=False, quiet=False))


# ----------------------------------------------------------------------------- rsvl-export
def _fake_export(seen: dict[str, Any]) -> Callable[[Any], Path]:
    """An export_bundle whose step raises the warnings torch/onnx raise during a real export."""
    from rsvl_export.pipeline import StepTimer

    def export_bundle(opts: Any) -> Path:
        timer = StepTimer(total=1, heartbeat_s=0)
        with timer.step("onnx", "image graph"):
            warnings.warn_explicit("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                                   UserWarning, "/site-packages/torch/jit/_trace.py", 1234)
            warnings.warn("onnxscript constant folding skipped", DeprecationWarning)
        seen["opts"] = opts
        return Path(opts.out)

    return export_bundle


@pytest.mark.parametrize("verbose", [False, True])
def test_export_silences_third_party_warnings(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture, tmp_path: Path, verbose: bool) -> None:
    from rsvl_export import pipeline
    from rsvl_export.cli import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(pipeline, "export_bundle", _fake_export(seen))
    argv = ["--out", str(tmp_path / "b"), "--engine", "none"] + (["-v"] if verbose else [])
    with caplog.at_level(logging.DEBUG, logger="rsvl.warnings"):
        assert main(argv) == 0
    err = capfd.readouterr().err
    assert "Python boolean" not in err and "UserWarning" not in err and "constant folding" not in err
    assert seen["opts"].out == str(tmp_path / "b")
    logged = [r.getMessage() for r in caplog.records if r.name == "rsvl.warnings"]
    assert any("UserWarning: Converting a tensor to a Python boolean" in m and "_trace.py:1234" in m for m in logged)
    assert any("DeprecationWarning: onnxscript constant folding skipped" in m for m in logged)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "rsvl.warnings")
    setup_cli_logging(argparse.Namespace(verbose=False, quiet=False))


def test_step_timer_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    from rsvl_export.pipeline import StepTimer

    timer = StepTimer(total=2, heartbeat_s=0.02)
    with caplog.at_level(logging.INFO, logger="rsvl.export"):
        with timer.step("engines", "TensorRT build"):
            deadline = time.monotonic() + 10
            while not any("still running" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.01)
        n_beats = sum("still running" in r.getMessage() for r in caplog.records)
        time.sleep(0.1)  # the heartbeat stops with the step
    beats = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert beats and beats[0].startswith("[1/2] engines: still running (") and beats[0].endswith(" s)")
    assert len(beats) == n_beats
    assert caplog.records[-1].getMessage().startswith("[1/2] engines done in ")
    assert "engines" in timer.timings and not [t for t in threading.enumerate() if t.name == "rsvl-export-engines"]


def test_export_error_points_at_the_final_bundle(monkeypatch: pytest.MonkeyPatch,
                                                 capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from rsvl_export import pipeline
    from rsvl_export.cli import main
    from rsvl_runtime.backends.tensorrt import TensorRTUnavailable

    out = tmp_path / "bundles" / "tsmnet-tiny-fp16"
    work = out.parent / f".{out.name}.partial"
    cmd = trtexec_command(work / "image.fp16.onnx", {"optical": ([1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64])},
                          engine_path=work / "image.fp16.engine")

    def failing(opts: Any) -> Path:
        raise TensorRTUnavailable(f"cannot build image.fp16.engine here: no GPU\nor with trtexec:\n  {cmd}")

    monkeypatch.setattr(pipeline, "export_bundle", failing)
    assert main(["--out", str(out), "--engine", "none"]) == 1
    err = capfd.readouterr().err
    assert ".partial" not in err
    assert f"--onnx={out / 'image.fp16.onnx'}" in err and f"--saveEngine={out / 'image.fp16.engine'}" in err


def test_final_bundle_paths() -> None:
    assert (final_bundle_paths("trtexec --onnx=bundles/.m-fp16.partial/image.fp16.onnx --saveEngine=/b/x/.rebuild-"
                               "k3j_9/image.fp16.engine") ==
            "trtexec --onnx=bundles/m-fp16/image.fp16.onnx --saveEngine=/b/x/image.fp16.engine")
    assert final_bundle_paths("`rsvl-export rebuild-engine bundles/m --engine tensorrt`") == \
        "`rsvl-export rebuild-engine bundles/m --engine tensorrt`"


# ----------------------------------------------------------------------------- error texts
def _corrupt_tif(tmp_path: Path) -> Path:
    p = write_tif(tmp_path / "good.tif", optical_array(128, 128), compress="deflate", tiled=True,
                  blockxsize=64, blockysize=64)
    data = bytearray(p.read_bytes())
    data[len(data) // 2:len(data) - 64] = b"\x55" * (len(data) - 64 - len(data) // 2)
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(bytes(data))
    return bad


def test_corrupt_raster_error_is_reworded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rsvl_runtime.raster_io import open_raster, read_check

    bad = _corrupt_tif(tmp_path)

    def run() -> int:
        with open_raster(bad) as ds:
            read_check(ds)
        return 0

    assert run_guarded("rsvl-infer", run, None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rsvl-infer: error: cannot read pixels of raster {bad}: ")
    assert "See previous exception" not in err and ".." not in err
    assert "IReadBlock failed" in err and "Decoding error" in err  # GDAL's own reason, from the chained errors
    assert "re-create or re-download it" in err


def test_error_text_of_library_errors(tmp_path: Path) -> None:
    import onnxruntime as ort

    bad = tmp_path / "image.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(Exception) as e:
        ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    text = error_text(e.value)
    assert not text.startswith("[ONNXRuntimeError]") and "Protobuf parsing failed" in text
    assert not text.endswith(".") and "\n" not in text
    assert error_text(ValueError("")) == "ValueError"


@pytest.mark.parametrize("content,expected", [
    (b"[\"water\", ", "not valid JSON (Expecting value at line 1 column 11)"),
    (b"\xff\xfe\x00w", "not UTF-8 text"),
])
def test_bad_vocab_file_names_the_flag(tmp_path: Path, content: bytes, expected: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from rsvl_runtime.cli_common import vocabulary

    f = tmp_path / "classes.json"
    f.write_bytes(content)
    args = _infer_parser().parse_args(["--bundle", "b", "--out", "o", "--vocab-file", str(f)])
    assert run_guarded("rsvl-infer", lambda: vocabulary(args) and 0, None) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rsvl-infer: error: --vocab-file {f}: {expected}") and err.count("\n") == 1
