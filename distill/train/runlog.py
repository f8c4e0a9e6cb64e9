"""What every run writes to its output directory (through `RunLog`).

  config.json      the resolved run config
  metrics.jsonl    one JSON object per logged step / evaluation
  results.json     the final figures
  tb/              TensorBoard events
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from distill.files import to_jsonable, write_json


class RunLog:
    """Metrics to `metrics.jsonl` and TensorBoard, flushed as they come."""

    def __init__(self, out_dir: os.PathLike, config: Any, *, tensorboard: bool = True):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "config.json", config)
        self._file = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        record = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        record.update({f"{prefix}{k}": to_jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def results(self, results: dict[str, Any]) -> None:
        write_json(self.dir / "results.json", results)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
