"""Known-harmless library noise, filtered where it is produced: one list, each entry with the reason.

Only lines that say nothing a user must act on are here; real warnings pass. `FTL_VERBOSE=1` keeps them all.
"""

from __future__ import annotations

import logging
import os
import warnings

# (message pattern for warnings.filterwarnings, why it is noise)
WARNINGS: list[tuple[str, str]] = [
    (".*does not have many workers.*", "ftl's loaders read tokenized data in memory; workers would only add start-up"),
    (".*`isinstance.treespec, LeafSpec.` is deprecated.*", "Lightning's own use of a torch API, nothing to change"),
    (".*LightningCLI's args parameter is intended.*", "ftl hands LightningCLI its argv on purpose"),
    (".*The dirpath has changed from.*", "testing another run's checkpoint: its best-checkpoint bookkeeping is "
                                         "rightly not carried over"),
]

# (logger name, text in the message, why it is noise)
LOG_LINES: list[tuple[str, str, str]] = [
    ("lightning.pytorch.utilities.rank_zero", "Detected KeyboardInterrupt, attempting graceful shutdown",
     "ftl prints its own line: what was saved and how to continue"),
    ("lightning.pytorch.utilities.rank_zero", "try installing [litlogger]", "an advertisement"),
]

# Not filtered but avoided where it starts (wandb prints it itself, past logging and warnings): W&B's "The anonymous
# setting has no effect", caused by Lightning passing `anonymous=None`; `ftl.reports.loggers._start` drops it.

# transformers' LOAD REPORT lists weights that were not in the pretrained checkpoint. For a fresh task head
# (ftl's fine-tuning always starts one, and a checkpoint load fills it right after) that is expected; a report
# that names any other weight is a real problem and passes.
HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.", "qa_outputs.")


class _DropLines(logging.Filter):
    def __init__(self, parts: list[str]) -> None:
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.getMessage() for part in self.parts)


class _HeadOnlyLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|")[0].strip() for line in message.splitlines() if line.count("|") >= 2]
        keys = [key for key in rows if key and key != "Key" and not key.startswith("-")]
        return not keys or not all(key.startswith(HEAD_PREFIXES) for key in keys)


_FILTERS: dict[str, logging.Filter] = {}


def quiet_library_noise() -> None:
    """Install the filters above (once per process)."""
    if os.environ.get("FTL_VERBOSE") == "1":
        return
    for pattern, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    by_logger: dict[str, list[str]] = {}
    for name, part, _why in LOG_LINES:
        by_logger.setdefault(name, []).append(part)
    for name, parts in by_logger.items():
        if name not in _FILTERS:
            _FILTERS[name] = _DropLines(parts)
            logging.getLogger(name).addFilter(_FILTERS[name])
    if "transformers" not in _FILTERS:
        _FILTERS["transformers"] = _HeadOnlyLoadReport()
        logging.getLogger("transformers.modeling_utils").addFilter(_FILTERS["transformers"])
