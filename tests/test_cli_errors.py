"""Bad input gets one line that says what is wrong and what to do, never a traceback or silence:
missing and junk checkpoints, unwritable outputs, a wrong --root (found before Ray starts or a run
folder is made), --resume with nothing to resume, the data layer's hints in CLI flags, and log
messages that show (--verbose / --quiet)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeroverse.cli import main


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def views_root(tmp_path_factory) -> Path:
    from synthetic_views import write_view_shards

    root = tmp_path_factory.mktemp("views8")
    write_view_shards(root, num_shapes=2, views_per_shape=8, resolution=16)
    return root


def test_refine_and_export_ply_with_a_missing_checkpoint(tmp_path, views_root):
    for args in (("refine", "--checkpoint", "/nonexistent", "--root", str(views_root)),
                 ("export-ply", "--checkpoint", "/nonexistent", "--views-root", str(views_root), "--out", str(tmp_path / "a.ply"))):  # fmt: skip
        result = run(*args)
        assert result.exit_code == 1 and "/nonexistent" in result.output and "does not exist" in result.output, result.output


@pytest.mark.parametrize(
    "content, said",
    [
        (b"junk\n", "it is not a file torch.save wrote (those are zip archives; this one is 5 bytes starting with b'junk\\n')"),
        ("truncated", "it is damaged or truncated"),
    ],
)
def test_eval_and_refine_say_what_is_wrong_with_a_checkpoint_file(tmp_path, views_root, content, said):
    import torch

    path = tmp_path / "junk.pt"
    if content == "truncated":
        torch.save({"step": 1, "model": {"w": torch.zeros(64)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    for args in (("eval", "--checkpoint", str(path), "--views-root", str(views_root)),
                 ("refine", "--checkpoint", str(path), "--root", str(views_root))):  # fmt: skip
        result = run(*args)
        assert result.exit_code == 1 and f"checkpoint {path} cannot be read: {said}" in result.output, result.output
        assert "missing or bad" not in result.output


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    for args in (("export", "0", "--root", str(tmp_path / "none"), "--out", "/proc/x.glb"),
                 ("export-ply", "--checkpoint", "/x.pt", "--views-root", str(tmp_path), "--out", "/proc/x.ply"),
                 ("refine", "--checkpoint", "/x.pt", "--root", str(tmp_path), "--out", "/proc/x.ply")):  # fmt: skip
        result = run(*args)
        assert result.exit_code == 1 and "--out /proc/" in result.output and "cannot write in /proc" in result.output, result.output
    ok = tmp_path / "new" / "deeper" / "x.glb"  # folders the command creates are fine
    result = run("export", "0", "--root", str(tmp_path / "none"), "--out", str(ok))
    assert "cannot write" not in result.output and "no manifest" in result.output, result.output


def test_render_checks_its_root_before_starting_ray(tmp_path):
    started = time.monotonic()
    result = run("render", "--root", str(tmp_path / "nonexistent"))
    assert result.exit_code == 1 and "has no shapes manifest: --root" in result.output and "is not a directory" in result.output, result.output
    (tmp_path / "empty").mkdir()
    result = run("render", "--root", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "has no shapes manifest; run `zeroverse generate" in result.output, result.output
    assert time.monotonic() - started < 10  # Ray's start alone takes longer


@pytest.mark.parametrize("model", ["gs-lrm", "g3r"])
def test_train_lrm_with_a_bad_root_makes_no_run_folder(tmp_path, model):
    out = tmp_path / "run"
    result = run("train-lrm", "--model", model, "--root", str(tmp_path / "nowhere"), "--out", str(out), "--device", "cpu")
    assert result.exit_code == 1 and "does not exist; pass the --root" in result.output, result.output
    assert not out.exists()


def test_train_lrm_resume_without_checkpoint_and_the_flags_to_fix_too_few_views(tmp_path, views_root):
    """G3R asks for 32 source views by default; these shapes have 8. The error names the
    train-lrm flags (not the library's skip_bad=True), --resume with no checkpoint says so, and
    the run folder the failed run made is removed."""
    out = tmp_path / "run"
    result = run("train-lrm", "--model", "g3r", "--preset", "tiny", "--root", str(views_root), "--out", str(out),
                 "--device", "cpu", "--resume", "--steps", "1")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"--resume, but {out / 'latest.pt'} does not exist: starting a new run at step 0" in result.output
    assert "--num-input-views" in result.output and "skip_bad" not in result.output, result.output
    assert not out.exists()


def test_verbose_and_quiet_set_the_log_level_of_zeroverse_loggers(tmp_path, capsys):
    log = logging.getLogger("zeroverse.lrm.train")
    try:
        for flag, shown in (("--verbose", {"debug", "info", "warning"}), (None, {"info", "warning"}), ("--quiet", {"warning"})):
            run(*([flag] if flag else []), "validate", "--root", str(tmp_path))
            capsys.readouterr()
            for level in ("debug", "info", "warning"):
                getattr(log, level)("%s message", level)
            err = capsys.readouterr().err
            assert {level for level in ("debug", "info", "warning") if f"{level} message" in err} == shown, (flag, err)
            assert err.count("warning message") == 1  # one handler, however often the CLI ran
    finally:
        for name in ("zeroverse", "pipelines"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)


def test_a_missing_tensorboard_is_said_once(tmp_path, views_root):
    """metrics.jsonl is always written; TensorBoard is optional, and its absence is said once."""
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("TensorBoard is installed here")
    except ImportError:
        pass
    result = run("train-lrm", "--preset", "tiny", "--root", str(views_root), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "1", "--image-size", "16", "--device", "cpu", "--num-workers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("TensorBoard unavailable") == 1, result.output
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
