"""The one run-directory service: every command's outputs go to a new folder that nothing else writes to.

- `new_run_dir(root, name, label)`: `<root>/<name>/<timestamp>[-label]`, never an existing folder;
- `given_run_dir(path, ...)`: a folder the user named; a fit refuses one that already holds a run unless it
  resumes it;
- `RunDirectory.discard()`: a command that failed on bad input leaves nothing behind (a folder it made and
  that holds no checkpoint), and never touches any other run;
- `newest_resumable(root, name)`: the run `fit --ckpt_path last` continues: the newest whose fit command did not
  finish (a finished run holds `fit_finished.json`, written once training, test and comparison are done);
- `mark_finished(run_dir, ...)`: writes that marker, atomically.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ftl.errors import FTLError
from ftl.reports.callbacks import write_json

# Written when a `fit` command ends without interruption, after its test and comparison: `--ckpt_path last`
# continues only runs without it (one whose training ended but whose test was cut off tests again).
FINISHED = "fit_finished.json"


@dataclass
class RunDirectory:
    """A run's folder and whether this process made it (only then may a failure remove it)."""

    path: Path
    created: bool

    def __post_init__(self) -> None:
        global _current
        _current = self

    def discard(self) -> None:
        """Remove the folder if this process made it and it holds no checkpoint (bad input: nothing to keep)."""
        if self.created and self.path.is_dir() and not any(self.path.glob("checkpoints/*.ckpt")):
            shutil.rmtree(self.path, ignore_errors=True)


_current: RunDirectory | None = None  # the run directory of this process's command, for interrupts


def current_run_dir() -> RunDirectory | None:
    """The run directory the running command uses (None before it has one)."""
    return _current


def _make(path: Path, option: str) -> bool:
    """mkdir -p; True if it did not exist. An unwritable location is one line naming the path and the fix."""
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FTLError(f"cannot create the run directory '{path}' ({err.strerror or type(err).__name__}): "
                       f"pass a writable {option}") from None
    return not existed


def new_run_dir(root: str | Path, name: str, label: str | None = None) -> RunDirectory:
    """A new folder `<root>/<name>/<YYYYmmdd-HHMMSS>[-<label>]` (suffixed `-2`, `-3`... if taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if label:
        stamp += f"-{label}"
    base = Path(root).expanduser() / name
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return RunDirectory(path, _make(path, "--runs_root"))


def given_run_dir(path: str | Path, *, fit: bool, resuming: bool) -> RunDirectory:
    """The folder of `--run_dir`: a fit that does not resume must not write into an earlier run."""
    folder = Path(path).expanduser()
    if fit and not resuming and folder.is_dir() and any(folder.iterdir()):
        raise FTLError(f"run_dir '{folder}' already holds a run: pick a new --run_dir, or resume it with "
                       "--ckpt_path last")
    return RunDirectory(folder, _make(folder, "--run_dir"))


def newest_with_last(root: str | Path, name: str, unfinished: bool = False) -> Path | None:
    """The newest run under `<root>/<name>` that saved a `checkpoints/last.ckpt` (only among those whose fit did
    not finish, with `unfinished`)."""
    found = [p for p in (Path(root).expanduser() / name).glob("*/checkpoints/last.ckpt") if p.is_file()
             and not (unfinished and (p.parent.parent / FINISHED).is_file())]
    return max(found, key=lambda p: p.stat().st_mtime).parent.parent if found else None


def newest_resumable(root: str | Path, name: str) -> Path | None:
    """The run `fit --ckpt_path last` continues: the newest one that was interrupted."""
    return newest_with_last(root, name, unfinished=True)


# Files a run's reports derive from its checkpoints. A resumed fit changes what they describe, so it removes
# them first (each is written again as the run goes on): none then cites a deleted checkpoint or an old model.
DERIVED = (FINISHED, "metrics.json", "summary.md", "compare.md", "compare.json", "compare", "test_predictions.csv",
           "test_rows.json", "generations.jsonl", "confusion_matrix.csv", "plots", "hf_model")


def mark_finished(run_dir: Path, epoch: int, global_step: int) -> None:
    """The run's fit command completed: training, and the test and comparison after it."""
    write_json(Path(run_dir) / FINISHED, {"epoch": epoch, "global_step": global_step})


def clear_derived(run_dir: Path) -> list[str]:
    """Remove the derived outputs of an earlier session of this run; returns the names removed."""
    removed = []
    for name in DERIVED:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        print(f"ftl: resuming: removed outputs of the earlier session ({', '.join(removed)}); they are written "
              "again for the resumed run", file=sys.stderr)
    return removed
