"""``nemo-csr-rail eval`` on the shipped dialogue set against the scripted stand-in (no model needed).

    python -m benchmarks.topic_eval_standin [--out runs/topic-standin]

The stand-in's 'model' calls the *current* message off topic iff it names a marker word (the default harm markers
plus stock, invest, competitor, recipe) and never reads the history, so its F1 measures the pipeline, not a model:
dialogues that are only decidable from the history are missed by construction. The same run is asserted by
``tests/integration/test_topic_eval.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nemo_csr_rail.cli.main import main as cli  # noqa: E402
from tests.support.rails_configs import retarget  # noqa: E402
from tests.support.standin import StandIn, verdict_responder  # noqa: E402
from tests.support.topic_prompt import OFF_TOPIC_MARKERS as OFF_TOPIC  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/topic-standin")
    args = ap.parse_args()
    with StandIn(responder=verdict_responder(OFF_TOPIC)) as guard, tempfile.TemporaryDirectory() as tmp:
        cfg = retarget(ROOT / "example_configs" / "support_bot", Path(tmp) / "cfg", guard_url=guard.url,
                       main_url="http://127.0.0.1:9/v1")
        return cli(["eval", "--no-progress", "--config", str(cfg), "--policy", "support", "--dataset",
                    str(ROOT / "tests" / "data" / "topic_dialogues.jsonl"), "--out", args.out, "--overwrite"])


if __name__ == "__main__":
    raise SystemExit(main())
