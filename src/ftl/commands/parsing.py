"""One argument engine for every command: jsonargparse (LightningCLI's), one `--help` style, `--config` files,
and one-line user errors (`prog: error: ...` for a bad option, `ftl: error: ...` for bad input).

`fit/validate/test/predict` and `compare` parse with `FTLArgumentParser` (LightningCLI's parser); `export`,
`mcq` and `sweep` are typed functions parsed by `function_command`, whose `Args:` docstrings become `--help`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from ftl.errors import FTLError


class _OneLineErrors:
    """Parse errors as a short message and a pointer to --help, instead of the full usage of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "").replace("__main__.py", "python -m ftl")
        sys.stderr.write(f"{prog}: error: {condense_parse_error(message)}\n(`{prog} --help` lists every option)\n")
        raise SystemExit(2)


class FTLArgumentParser(_OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser with one-line errors."""


class CommandParser(_OneLineErrors, ArgumentParser):
    """jsonargparse's parser with one-line errors, for the commands that are functions."""


# The lines of a jsonargparse message that say what was wrong (the rest lists every Union subtype tried).
_PARSE_ERROR_DETAILS = ("Got value", "is not accepted", "Expected a path", "is required", "not a valid", "Import path")


def condense_parse_error(message: str) -> str:
    """`model.learning_rate: Expected a <class 'float'>. Got value: x` from jsonargparse's nested explanation
    of a bad value in subclass mode; other messages are returned unchanged."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return message.strip()
    detail = next((line for line in lines if any(mark in line for mark in _PARSE_ERROR_DETAILS)), None)
    if detail is not None:
        keys = re.findall(r'Parser key "([^"]+)"', message[: message.find(detail)])
    else:  # a plain type mismatch: the first type expected and the value given
        expected = next((line for line in lines if line.startswith("Expected a")), None)
        given = next((line for line in lines if line.startswith("Given value:")), None)
        if expected is None or given is None:
            return message.strip()
        detail, keys = f"{expected}. {given}", re.findall(r'Parser key "([^"]+)"', message)
    return f"{'.'.join(keys)}: {detail}" if keys else detail


def check_config_files(argv: list[str]) -> None:
    """Missing or malformed `--config` files become one clear line (jsonargparse prints a parser dump)."""
    import yaml

    for flag, value in zip(argv, argv[1:], strict=False):
        if flag not in ("--config", "-c"):
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise FTLError(f"config file '{value}' not found: check the path (task configs live in configs/)")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise FTLError(f"config file '{value}' is not valid YAML{where} ({problem}): fix the YAML") from None


def find_user_error(err: BaseException | None) -> FTLError | None:
    """The FTLError behind `err`, if any: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, FTLError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def prog_name(command: str) -> str:
    """`ftl <command>` as the user typed it: `ftl ...` (console script) or `python -m ftl ...`."""
    return f"{'ftl' if Path(sys.argv[0]).name == 'ftl' else 'python -m ftl'} {command}"


def function_parser(prog: str, function: Callable[..., Any], positional: bool = False,
                    skip: set[str] | None = None) -> CommandParser:
    """A parser for `function`'s typed parameters (`Args:` docstring as help) plus `--config FILE.yaml`."""
    doc = (function.__doc__ or "").strip().split("\n\n")[0]
    parser = CommandParser(prog=prog, description=doc)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of these options.")
    parser.add_function_arguments(function, as_positional=positional, skip=skip)
    return parser


def split_passthrough(parser: CommandParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command's own arguments, the rest): for `sweep`, whose other `--key value` pairs go to every trial.
    The command's own are its options (`--name value`, `--name=value`), `-h/--help`, `--config` and positionals."""
    own_options = {opt for action in parser._actions for opt in action.option_strings}
    mine: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            mine.append(arg)
        elif name in own_options:
            takes_value = name not in ("-h", "--help") and "=" not in arg and i + 1 < len(argv)
            mine += argv[i : i + 2] if takes_value else [arg]
            i += 1 if takes_value else 0
        else:
            value = argv[i + 1] if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            rest += [arg] if value is None else [arg, value]
            i += 0 if value is None else 1
        i += 1
    return mine, [a for a in rest if a != "--"]


def function_command(prog: str, function: Callable[..., Any], argv: list[str], positional: bool = False) -> Any:
    """Parse `argv` for `function` and call it: `ftl export`, `ftl mcq`."""
    check_config_files(argv)
    parser = function_parser(prog, function, positional)
    config = parser.parse_args(argv)
    return function(**{k: v for k, v in config.as_dict().items() if k != "config" and not k.startswith("__")})
