"""Put a by-condition measurement (conditions.py) of the shipped keyword-event model on its card:
the shipped folder, its metrics with `test_by_condition` added, installed again with
`model.install_streams` (weights, detector and every other number unchanged).

    python card_conditions.py COND.json [CHECKPOINT]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.install_streams import install  # noqa: E402


def main() -> None:
    cond = json.loads(Path(sys.argv[1]).read_text())
    shipped = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "checkpoints" / "kws-events-s4d"
    metrics = json.loads((shipped / "metrics.json").read_text())
    if cond["threshold"] != metrics["detector"]["threshold"]:
        raise SystemExit("measured at another threshold than the shipped detector's")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / shipped.name
        shutil.copytree(shipped, src)
        metrics["test_by_condition"] = cond
        (src / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        cfg = json.loads((src / "config.json").read_text())
        cfg["metrics"]["test_by_condition"] = cond
        (src / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        install(Path(tmp), shipped.parent, ROOT / "bench" / "RESULTS.md")


if __name__ == "__main__":
    main()
