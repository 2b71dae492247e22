"""Input mistakes across the commands end with one line on stderr naming what is wrong, exit
status 2 and no traceback (a survey of the inputs a new user gets wrong)."""

import pytest

from ftjax.cli import main


@pytest.fixture
def paths(tmp_path, tiny_config_file):
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    (tmp_path / "afile").write_text("x")
    return tmp_path, tiny_config_file


def _train(paths, *sets, config=None, workdir=None):
    root, tiny = paths
    args = ["train", str(config or tiny), "--workdir", str(workdir or root / "w"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return args


CASES = {
    "missing config": (lambda p: _train(p, config=p[0] / "nope.py"), "does not exist"),
    "syntax error": (lambda p: _train(p, config=p[0] / "syntax.py"), "SyntaxError"),
    "unknown key": (lambda p: _train(p, "stepz=3"), "did you mean 'steps'"),
    "wrong type": (lambda p: _train(p, "steps=many"), "'steps' must be int"),
    "override without =": (lambda p: _train(p, "steps"), "not of the form key=value"),
    "infinite learning rate": (lambda p: _train(p, "optimizer.learning_rate=1e999"),
                               "learning_rate must be a finite number > 0"),
    "zero batch": (lambda p: _train(p, "batch_size=0"), "'batch_size' must be >= 1"),
    "label smoothing": (lambda p: _train(p, "label_smoothing=2.0"), "[0, 1)"),
    "missing model": (lambda p: _train(p, f"model.name={p[0]}/nomodel"), "neither an existing"),
    "missing data": (lambda p: _train(p, f"data.path={p[0]}/none_{{split}}.jsonl"),
                     "does not exist"),
    "data directory": (lambda p: _train(p, f"data.path={p[0]}"), "a directory"),
    "workdir is a file": (lambda p: _train(p, workdir=p[0] / "afile"), "is a file"),
    "unknown eval split": (lambda p: _train(p, "eval_splits=('dev',)"), "no source has"),
    "mesh too large": (lambda p: _train(p, "mesh.data=3"), "device count"),
    "unknown hook": (lambda p: _train(p, "hooks=('nomod:X',)"), "cannot import 'nomod'"),
    "unknown loss term": (lambda p: _train(p, "losses.x.kind=nope"), "unknown loss term"),
    "unknown encoding": (lambda p: _train(p, "sources.a.path=x.csv", "sources.a.encoding=utf-9"),
                         "unknown encoding"),
    "rule matching nothing": (lambda p: _train(p, "rules=(('nothing/.*', 'train'),)"),
                              "matches no parameter"),
    "lora targeting nothing": (lambda p: _train(p, "method=lora", "lora.targets=nothing"),
                               "match no module"),
    "unknown best metric": (lambda p: _train(p, "best_metric=f1"), "not a metric"),
    "eval of no run": (lambda p: ["eval", str(p[1]), "--workdir", str(p[0] / "nowhere")],
                       "no latest checkpoint"),
    "export of no run": (lambda p: ["export", "--workdir", str(p[0] / "nowhere"), "--out",
                                    str(p[0] / "o")], "not a directory"),
    "generate without a model": (lambda p: ["generate", "--model", str(p[0] / "nomodel"),
                                            "--prompt", "hi"], "unknown model"),
    "config show of a typo": (lambda p: ["config", "show", str(p[1]), "--set", "lora.rnk=1"],
                              "did you mean 'lora.rank'"),
    "sweep of no file": (lambda p: ["sweep", str(p[0] / "nope.py")], "does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_input_errors_are_one_line_and_exit_2(case, paths, capsys):
    make_args, expected = CASES[case]
    args = make_args(paths)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    command = args[0]
    assert err.startswith(f"ftjax {command}: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (paths[0] / "w").exists()  # nothing written for a run that never started
