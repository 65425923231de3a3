"""Bad data files and columns are one line naming the file, the place and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftl.errors import FTLError

ROWS = [("chest pain on exertion", "cardio"), ("wheezing at night", "resp")] * 6


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


def good_csv() -> str:
    return "text,label\n" + "".join(f"{t},{label}\n" for t, label in ROWS)


def raw(folder: Path, tiny_bert: Path):
    from ftl.data.classification import TextClassificationDataModule

    return TextClassificationDataModule(data_dir=str(folder), tokenizer=str(tiny_bert)).raw


def message(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_an_unclosed_quote_names_the_file_and_the_line_it_opens_on(tmp_path, tiny_bert):
    lines = good_csv().splitlines()
    lines[5] = '"wheezing at night, resp'  # line 6 of the file opens a quote that never closes
    folder = write(tmp_path / "d", "train.csv", "\n".join(lines) + "\n")
    with pytest.raises(FTLError) as err:
        raw(folder, tiny_bert)
    text = message(err)
    assert str(folder / "train.csv") in text and "line 6" in text and "close the quote" in text


def test_a_row_with_too_many_fields_names_its_line(tmp_path, tiny_bert):
    folder = write(tmp_path / "d", "train.csv", good_csv() + "shortness of breath, and cough,resp\n")
    with pytest.raises(FTLError) as err:
        raw(folder, tiny_bert)
    text = message(err)
    assert "line 14 has 3 fields, the header has 2" in text and "quote fields" in text


def test_a_broken_jsonl_line_is_named(tmp_path, tiny_bert):
    body = "".join(f'{{"text": "{t}", "label": "{label}"}}\n' for t, label in ROWS) + '{"text": "cough", \n'
    folder = write(tmp_path / "d", "train.jsonl", body)
    with pytest.raises(FTLError) as err:
        raw(folder, tiny_bert)
    assert "line 13 is not one JSON object" in message(err)


def test_a_text_column_empty_in_every_row_is_an_error(tmp_path, tiny_bert):
    folder = write(tmp_path / "d", "train.csv", "text,note,label\n" + "".join(f",{t},{label}\n" for t, label in ROWS))
    with pytest.raises(FTLError) as err:
        raw(folder, tiny_bert)
    text = message(err)
    assert "column 'text' is empty in every row of the" in text and "--data.text_column" in text and "note" in text


def test_a_few_empty_texts_are_a_warning_with_their_count(tmp_path, tiny_bert, capsys):
    body = good_csv() + ",cardio\n" * 2
    raw(write(tmp_path / "d", "train.csv", body), tiny_bert)
    err = capsys.readouterr().err
    assert "rows in the" in err and "have an empty 'text'" in err


def test_a_data_cache_that_cannot_be_written_is_one_line_naming_it(tmp_path, tiny_data_dir, tiny_bert, capsys):
    """(Tests run as root here, so a read-only folder would not stop them: a file in the way does.)"""
    from tests.helpers import ROOT, run_cli

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
                "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
                "--data.data_dir", str(tiny_data_dir), "--data.cache_dir", str(blocker / "cache"),
                "--runs_root", str(tmp_path / "runs"))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("ftl: run directory")]
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0] == (f"ftl: error: cannot write the data cache '{blocker / 'cache' / 'raw'}' (Not a directory): "
                      "set --data.cache_dir (or FTL_CACHE) to a writable folder")
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not list((tmp_path / "runs").glob("*/*"))
