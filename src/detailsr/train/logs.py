"""Training logs: CSV files always, TensorBoard when asked for."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ConfigError


class CsvLog:
    """Rows appended to `path` under a fixed header, flushed at once (a killed run keeps its log).

    Resuming at iteration i first drops the rows logged after i: the resumed run logs them again.
    """

    def __init__(self, path: Path, columns: list[str], resume_at: int | None = None) -> None:
        self.path, self.columns = path, columns
        kept = _rows_up_to(path, resume_at) if resume_at is not None and path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: _format(v) for k, v in row.items()}
            )


def _rows_up_to(path: Path, iteration: int) -> list[dict]:
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["iteration"]) <= iteration]


def _format(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class TensorBoardLog:
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard needs the tensorboard package "
                              "(pip install 'detailsr[tensorboard]')") from None
        self.writer = SummaryWriter(str(folder))

    def write(self, prefix: str, row: dict, iteration: int) -> None:
        for key, value in row.items():
            if isinstance(value, float) and key != "iteration":
                self.writer.add_scalar(f"{prefix}/{key}", value, iteration)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
