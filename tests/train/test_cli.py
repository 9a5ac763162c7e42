"""The command-line entry points (mednext-train, mednext-predict, mednext-prepare): help, option errors, no
argv sniffing, input grouping; and the training package's imports (no sys.path edits, no bare sibling names)."""
import ast
import os

import pytest

from mednext_fast.train import predict, predictor, prepare, run

from ._run_helpers import TRAIN_DIR

ENTRY_POINTS = {"mednext-train": run.main, "mednext-predict": predict.main, "mednext-prepare": prepare.main}
REQUIRED = {"mednext-train": [], "mednext-predict": ["-i", "in", "-o", "out", "-m", "run"],
            "mednext-prepare": ["--dataset", "synthetic", "--out", "out"]}


@pytest.mark.parametrize("prog", sorted(ENTRY_POINTS))
def test_help_exits_zero_and_names_the_console_script(prog, capsys):
    with pytest.raises(SystemExit) as exc:
        ENTRY_POINTS[prog](["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}")


@pytest.mark.parametrize("prog", sorted(ENTRY_POINTS))
def test_unknown_option_is_a_usage_error(prog, capsys):
    with pytest.raises(SystemExit) as exc:
        ENTRY_POINTS[prog]([*REQUIRED[prog], "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_train_takes_no_subcommand(capsys):
    # 'predict' is its own console script; the training CLI does not look at argv[0] for one.
    with pytest.raises(SystemExit) as exc:
        run.main(["predict", "-i", "x"])
    assert exc.value.code == 2
    assert "unrecognized arguments: predict" in capsys.readouterr().err


def test_help_makes_no_speed_claims(capsys):
    for main in (run.main, predict.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = capsys.readouterr().out.lower()
        assert "faster" not in text and "slower" not in text and "speedup" not in text


def test_predict_needs_a_run_folder(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit, match="no plans.json"):
        predict.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path)])


def test_group_inputs(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    got = predictor.group_inputs(str(tmp_path), 2)
    assert got == {"a": [str(tmp_path / "a_0000.nii.gz"), str(tmp_path / "a_0001.nii.gz")],
                   "b": [str(tmp_path / "b_0000.nii.gz"), str(tmp_path / "b_0001.nii")]}
    with pytest.raises(SystemExit, match="the model needs 0..2"):
        predictor.group_inputs(str(tmp_path), 3)
    (tmp_path / "plain.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit, match="multi-channel models need nnU-Net names"):
        predictor.group_inputs(str(tmp_path), 2)
    single = tmp_path / "single"
    single.mkdir()
    (single / "scan.nii.gz").write_bytes(b"")
    assert predictor.group_inputs(str(single), 1) == {"scan": [str(single / "scan.nii.gz")]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .nii.gz"):
        predictor.group_inputs(str(tmp_path / "empty"), 1)


def test_train_package_imports_siblings_by_full_name():
    # `python train/run.py` puts train/ first on sys.path: a bare `import trainer` would load a second copy of
    # the module under a generic top-level name, and a sys.path edit would hide that.
    siblings = {f[:-3] for f in os.listdir(TRAIN_DIR) if f.endswith(".py")}
    for name in sorted(siblings):
        path = os.path.join(TRAIN_DIR, f"{name}.py")
        with open(path) as handle:
            source = handle.read()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path}:{node.lineno}: edits or reads sys.path")
            if isinstance(node, ast.Import):
                bare = [a.name for a in node.names if a.name.split(".")[0] in siblings]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                bare = [node.module] if node.module and node.module.split(".")[0] in siblings else []
            else:
                continue
            assert not bare, f"{path}:{node.lineno}: import {bare} by its full name mednext_fast.train.<module>"
