"""ArgumentParser / HfArgumentParser: command lines, JSON, YAML and dicts into dataclasses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import pytest

from trainkit import HfArgumentParser, TrainingArguments
from trainkit.parser import ArgumentParser, string_to_bool, to_cli_args


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class ModelArguments:
    model_name: str = field(default="tiny", metadata={"help": "Which model to build."})
    hidden: int = 32
    dropout: float | None = None
    flag: bool = False
    enabled: bool = True
    maybe: bool | None = None
    color: Color = Color.RED
    mode: Literal["a", "b"] = "a"
    layers: list[int] = field(default_factory=lambda: [1, 2])
    names: list[str] | None = None


@dataclass
class Required:
    path: str
    count: int = 1


def parse(*argv: str):
    return ArgumentParser(ModelArguments).parse_args_into_dataclasses(list(argv), look_for_args_file=False)[0]


def test_alias_name():
    assert HfArgumentParser is ArgumentParser


def test_defaults():
    args = parse()
    assert args == ModelArguments()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--flag"], True),
        (["--flag", "true"], True),
        (["--flag", "yes"], True),
        (["--flag", "False"], False),
        (["--flag", "0"], False),
    ],
)
def test_bool_spellings(argv, expected):
    assert parse(*argv).flag is expected


def test_no_prefix_for_true_defaults():
    assert parse("--no_enabled").enabled is False
    assert parse("--no-enabled").enabled is False
    assert parse("--enabled", "false").enabled is False


def test_optional_bool_flag_alone_means_true():
    assert parse("--maybe").maybe is True
    assert parse("--maybe", "false").maybe is False


def test_enum_literal_list_optional():
    args = parse("--color", "blue", "--mode", "b", "--layers", "3", "4", "5", "--names", "x", "y", "--dropout", "0.1")
    assert args.color == Color.BLUE
    assert args.mode == "b"
    assert args.layers == [3, 4, 5]
    assert args.names == ["x", "y"]
    assert args.dropout == 0.1


def test_dash_spelling():
    assert parse("--model-name", "big").model_name == "big"


def test_bad_choice_names_option_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse("--color", "green")
    err = capsys.readouterr().err
    assert "--color" in err
    assert "red" in err
    assert "blue" in err


def test_bad_bool_names_option(capsys):
    with pytest.raises(SystemExit):
        parse("--flag", "maybe")
    assert "--flag" in capsys.readouterr().err


def test_bad_int_names_option(capsys):
    with pytest.raises(SystemExit):
        parse("--hidden", "many")
    assert "--hidden" in capsys.readouterr().err


def test_unknown_option_suggests(capsys):
    with pytest.raises(SystemExit):
        parse("--hiden", "3")
    assert "--hidden" in capsys.readouterr().err


def test_remaining_strings():
    parser = ArgumentParser(ModelArguments)
    args, rest = parser.parse_args_into_dataclasses(
        ["--hidden", "4", "--other", "x"], return_remaining_strings=True, look_for_args_file=False
    )
    assert args.hidden == 4
    assert rest == ["--other", "x"]


def test_required_field(capsys):
    parser = ArgumentParser([Required, ModelArguments])
    req, model = parser.parse_args_into_dataclasses(["--path", "p", "--hidden", "5"], look_for_args_file=False)
    assert (req.path, model.hidden) == ("p", 5)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses([], look_for_args_file=False)
    assert "--path" in capsys.readouterr().err


def test_help_shows_field_help(capsys):
    with pytest.raises(SystemExit):
        ArgumentParser(ModelArguments).parse_args_into_dataclasses(["--help"], look_for_args_file=False)
    out = capsys.readouterr().out
    assert "Which model to build." in out
    assert "--no_enabled" in out


def test_training_arguments_help_renders(capsys):
    with pytest.raises(SystemExit):
        ArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--help"], look_for_args_file=False)
    out = capsys.readouterr().out
    assert "--per_device_train_batch_size" in out
    assert "--no_dataloader_pin_memory" in out


def test_training_arguments_command_line():
    parser = HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "o", "--report_to", "none", "--disable_tqdm"],
        look_for_args_file=False,
    )
    assert args.output_dir == "o"
    assert args.report_to == []
    assert args.disable_tqdm is True


def test_validation_error_becomes_parser_error(capsys):
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--push_to_hub"], look_for_args_file=False)
    assert "push_to_hub" in capsys.readouterr().err


def test_dict_field_as_json_string():
    from trainkit.args_support import IMPLEMENTED_ISSUES

    if 3 not in IMPLEMENTED_ISSUES:
        pytest.skip("needs issue 3")
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycles": 3}'], look_for_args_file=False
    )
    assert args.lr_scheduler_kwargs == {"num_cycles": 3}


def test_parse_dict_and_extra_keys():
    parser = ArgumentParser(ModelArguments)
    (args,) = parser.parse_dict({"hidden": 3, "color": "blue"})
    assert args.hidden == 3
    assert args.color in (Color.BLUE, "blue")
    with pytest.raises(ValueError, match=r"'hiden' \(did you mean 'hidden'\?\)"):
        parser.parse_dict({"hiden": 3})
    (args,) = parser.parse_dict({"hidden": 3, "zzz": 1}, allow_extra_keys=True)
    assert args.hidden == 3


def test_parse_json_and_yaml_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"output_dir": "j", "report_to": "none"}))
    (tmp_path / "a.yaml").write_text("output_dir: y\nreport_to: none\n")
    parser = HfArgumentParser(TrainingArguments)
    assert parser.parse_json_file(tmp_path / "a.json")[0].output_dir == "j"
    assert parser.parse_yaml_file(str(tmp_path / "a.yaml"))[0].output_dir == "y"


def test_malformed_files_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(ValueError, match=r"bad\.json"):
        parser.parse_json_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        parser.parse_yaml_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"list\.yaml.*mapping"):
        parser.parse_yaml_file(tmp_path / "list.yaml")


def test_args_file(tmp_path):
    f = tmp_path / "run.args"
    f.write_text("--hidden 9 --flag")
    args = ArgumentParser(ModelArguments).parse_args_into_dataclasses(["--hidden", "10"], args_filename=str(f))[0]
    assert args.flag is True
    assert args.hidden == 10  # the command line wins over the file


def test_to_cli_args_round_trip():
    original = ModelArguments(hidden=7, flag=True, enabled=False, color=Color.BLUE, layers=[9], names=["a"])
    argv = to_cli_args(original)
    assert parse(*argv) == original


def test_to_cli_args_none_for_optional_number():
    @dataclass
    class D:
        timeout: int | None = 5

    argv = to_cli_args(D(timeout=None))
    assert argv == ["--timeout", "None"]
    assert ArgumentParser(D).parse_args_into_dataclasses(argv, look_for_args_file=False)[0].timeout is None


def test_string_to_bool_rejects_junk():
    import argparse

    assert string_to_bool("Y") is True
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        string_to_bool("maybe")
