"""Redraw RESULTS.md and the plots from a saved run: python -m paradl_tf.benchmark.report bench/results.json"""

import json
import sys
from pathlib import Path
from typing import Any

from paradl_tf.benchmark.report.markdown import write_all

path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
data: dict[str, Any] = json.loads(path.read_text())
print(", ".join(write_all(data, path.parent)))
