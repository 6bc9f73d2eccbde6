"""Bad input to `gpt2-serve train`: one line on stderr, exit code 2, nothing written.

Each case is a real `gpt2-serve train` process (so no library warning or traceback can hide in
the captured output); the cases run side by side to keep the whole file to a few seconds."""

import os
import subprocess

import pytest

from tests.train.conftest import ROOT, TINY

CASES = {
    # name: (how to build the arguments from a work directory, what the message must say)
    "missing file": (lambda w: [w / "nope.txt", "-o", w / "out-missing", *TINY], "no such file or directory"),
    "empty data": (lambda w: [w / "empty.txt", "-o", w / "out-empty", *TINY], "no text in"),
    "block size above the context": (lambda w: [w / "ok.txt", "-o", w / "out-block", *TINY, "--block-size", "64"],
                                     "above the model's context of 32"),
    "block size above a checkpoint's context": (
        lambda w: [w / "ok.txt", "-o", w / "out-block2", "--from", w / "tiny", "--block-size", "4096"],
        "above the model's context of 512"),
    "corrupt JSONL line": (lambda w: [w / "bad.jsonl", "-o", w / "out-jsonl", *TINY],
                           "bad.jsonl line 2: not valid JSON"),
    "JSONL without the text field": (lambda w: [w / "nofield.jsonl", "-o", w / "out-field", *TINY],
                                     "nofield.jsonl line 1: not a JSON object with a string 'text' field"),
    "output exists": (lambda w: [w / "ok.txt", "-o", w / "taken", *TINY],
                      "exists and is not empty; pass --overwrite"),
    "resume without checkpoints": (lambda w: [w / "ok.txt", "-o", w / "taken", *TINY, "--resume"],
                                   "holds no checkpoint to resume from"),
    "fine-tune and size flags": (lambda w: [w / "ok.txt", "-o", w / "out-both", "--from", w / "tiny", *TINY],
                                 "exclude each other"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model_dir, train_command) -> dict:
    work = tmp_path_factory.mktemp("bad-input")
    (work / "empty.txt").write_text("  \n\n")
    (work / "ok.txt").write_text("Some text to train on. " * 50)
    (work / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "cut short\n{"text": "fine"}\n')
    (work / "nofield.jsonl").write_text('{"body": "no text field"}\n')
    (work / "taken").mkdir()
    (work / "taken" / "keep.txt").write_text("someone's work")
    (work / "tiny").symlink_to(tiny_model_dir)
    running = {}
    for name, (build, _) in CASES.items():
        argv, env = train_command(*build(work))
        running[name] = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    results = {name: (proc, *proc.communicate(timeout=120)) for name, proc in running.items()}
    return {"work": work, "results": results}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, outcomes):
    proc, stdout, stderr = outcomes["results"][case]
    assert proc.returncode == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gpt2-serve train: error: ")
    assert CASES[case][1] in lines[0]


def test_nothing_is_written_on_bad_input(outcomes):
    work = outcomes["work"]
    assert sorted(p.name for p in (work / "taken").iterdir()) == ["keep.txt"]
    assert not any(p.name.startswith("out-") for p in work.iterdir())


def test_without_the_train_extra_the_command_says_what_to_install_in_one_line(tmp_path, train_command):
    site = tmp_path / "site"
    site.mkdir()
    # as if `datasets` (from the train extra) were not installed
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['datasets'] = None\n")
    (tmp_path / "ok.txt").write_text("Some text to train on. " * 50)
    argv, env = train_command(tmp_path / "ok.txt", "-o", tmp_path / "out", *TINY,
                              env={"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"})
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "needs the 'train' extra" in lines[0] and "pip install 'gpt2-serve[train]'" in lines[0]
    assert "Traceback" not in proc.stderr
