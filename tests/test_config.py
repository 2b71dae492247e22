"""Strict configs: unknown keys, wrong types and bad values name the key and the closest one."""

import glob

import pytest

from ftjax.settings import ConfigError, import_config_file
from ftjax.sweep.plan import is_sweep_config
from ftjax.train.config import load_config

# Sweep configs (ftjax sweep) live beside the experiments; tests/test_sweep.py checks those.
CONFIGS = [p for p in sorted(glob.glob("experiments/*.py"))
           if not is_sweep_config(import_config_file(p))]


@pytest.mark.parametrize("path", CONFIGS)
def test_every_experiment_config_parses(path):
    cfg = load_config(path)
    for key in ("steps", "seed", "eval_every", "checkpoint_every"):
        assert key in cfg


def _write(tmp_path, body):
    path = tmp_path / "exp.py"
    path.write_text("from ftjax.train.config import base_config\n\n"
                    "def get_config():\n    c = base_config()\n" + body + "    return c\n")
    return path


def test_unknown_key_in_file_names_closest(tmp_path):
    path = _write(tmp_path, "    c.optimizer.learnin_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.learnin_rate'.*"
                                          r"did you mean 'optimizer.learning_rate'"):
        load_config(path)


def test_unknown_override_names_closest(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"unknown key 'stepz'.*did you mean 'steps'"):
        load_config(path, ["stepz=3"])


def test_wrong_type_names_key(tmp_path):
    path = _write(tmp_path, "    c.steps = 'many'\n")
    with pytest.raises(ConfigError, match=r"exp.py: get_config\(\).*'steps'.*int"):
        load_config(path)
    with pytest.raises(ConfigError, match="steps"):
        load_config(_write(tmp_path, ""), ["steps=1.5"])


def test_bad_values(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match="method.*expected one of"):
        load_config(path, ["method=lora_typo"])
    with pytest.raises(ConfigError, match="steps.*>= 1"):
        load_config(path, ["steps=0"])
    with pytest.raises(ConfigError, match="not divisible by accumulation_steps"):
        load_config(path, ["batch_size=10", "accumulation_steps=3"])
    with pytest.raises(ConfigError, match="model.attention_impl.*expected one of"):
        load_config(path, ["model.attention_impl=flash"])


def test_overrides_apply_and_result_is_locked(tmp_path):
    cfg = load_config(_write(tmp_path, ""), ["optimizer.learning_rate=1", "steps=7",
                                             "model.dtype=bfloat16", "eval_splits=('validation','test')"])
    assert cfg.optimizer.learning_rate == 1.0 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.steps == 7 and cfg.model.dtype == "bfloat16"
    assert tuple(cfg.eval_splits) == ("validation", "test")
    with pytest.raises(AttributeError):
        cfg.not_a_key = 1


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config(bad)


def test_trainability_rules_in_a_config_are_checked_where_written(tmp_path):
    """`rules`: (regex, "frozen" | "train" | {Rule fields}) pairs; each mistake names its entry,
    and they survive the run's config.json (JSON turns the pairs into lists)."""
    import json

    from ftjax.optim.rules import FROZEN, Rule, parse_spec
    from ftjax.train.config import config_from_dict

    path = _write(tmp_path, "")
    for rules, message in [
        ("(('backbone/(', 'frozen'),)", r"rules\[0\]: invalid regex"),
        ("(('.*', 'train'), ('.*', 'freeze'))", r"rules\[1\]: unknown rule 'freeze'"),
        ("(('.*', {'lr': 0.1, 'decay': 2}),)", r"rules\[0\]: unknown rule field.*'decay'"),
        ("(('.*', {'lr': -1.0}),)", r"rules\[0\]: multipliers must be >= 0"),
        ("('.*',)", r"rules\[0\]: expected a \(regex, rule\) pair"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(path, [f"rules={rules}"])
    with pytest.raises(ConfigError, match="method='custom'.*'rules'.*empty"):
        load_config(path, ["method=custom"])

    rules = "(('backbone/layers_0/.*', {'lr': 0.5, 'wd': 0.0}), ('head/.*', 'train'), ('.*', 'frozen'))"
    cfg = load_config(path, ["method=custom", f"rules={rules}"])
    spec = [("backbone/layers_0/.*", Rule(lr=0.5, wd=0.0)), ("head/.*", Rule()), (".*", FROZEN)]
    assert parse_spec(cfg.rules) == spec
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())), "config.json")
    assert parse_spec(again.rules) == spec


def test_config_show_prints_every_key_with_its_help_and_marks_changes(tmp_path, capsys):
    from ftjax.cli import main
    from ftjax.train.config import SCHEMA, base_config

    path = _write(tmp_path, "    c.steps = 7\n")
    assert main(["config", "show", str(path), "--set", "lora.rank=4"]) == 0
    out = capsys.readouterr().out
    assert "* steps = 7\n      # optimizer steps" in out
    assert "* lora.rank = 4\n      # r, the inner dimension of A @ B" in out
    assert "  seed = 0" in out  # unchanged keys are not marked
    keys = [line.split(" = ")[0][2:] for line in out.splitlines() if " = " in line
            and not line.startswith("      #")]
    assert keys == list(SCHEMA.keys(base_config()))  # every key, in schema order
    assert all(k.help for k in SCHEMA.keys().values()), [
        name for name, k in SCHEMA.keys().items() if not k.help]
    assert main(["config", "show", str(path), "--set", "lora.rnk=4"]) == 2
    err = capsys.readouterr().err
    assert err == "ftjax config: --set lora.rnk=4: unknown key 'lora.rnk'; did you mean " \
                  "'lora.rank'?\n"
