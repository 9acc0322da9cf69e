"""A small, real training job for INCL's embedded stack: logistic regression by SGD, CPU only, stdlib only.

It logs loss and accuracy with `incl.log`, checkpoints every epoch to $INCL_CHECKPOINT_DIR (and on SIGTERM,
INCL's "checkpoint now" signal), resumes from the checkpoint on a later attempt, and writes the trained model
to $INCL_OUTPUT_DIR.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import incl

EPOCHS = int(os.environ.get("EPOCHS", "30"))
LR = float(os.environ.get("LR", "0.1"))
FEATURES, SAMPLES, SEED = 8, 4000, 7

ckpt_dir = Path(os.environ.get("INCL_CHECKPOINT_DIR", "checkpoints"))
out_dir = Path(os.environ.get("INCL_OUTPUT_DIR", "outputs"))
ckpt_path = ckpt_dir / "state.json"


def dataset() -> list[tuple[list[float], int]]:
    rng = random.Random(SEED)
    true_w = [rng.uniform(-2, 2) for _ in range(FEATURES)]
    data = []
    for _ in range(SAMPLES):
        x = [rng.gauss(0, 1) for _ in range(FEATURES)]
        p = 1 / (1 + math.exp(-sum(w * v for w, v in zip(true_w, x, strict=False))))
        data.append((x, 1 if rng.random() < p else 0))
    return data


def save(state: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(ckpt_path)  # atomic: a kill mid-write never leaves a torn checkpoint


def main() -> int:
    data = dataset()
    train, test = data[: SAMPLES * 3 // 4], data[SAMPLES * 3 // 4:]
    state = {"epoch": 0, "w": [0.0] * FEATURES, "b": 0.0}
    if ckpt_path.exists():
        state = json.loads(ckpt_path.read_text())
        print(f"resuming from epoch {state['epoch']} (attempt {os.environ.get('INCL_ATTEMPT', '?')})")

    def on_sigterm(signum: int, frame: object) -> None:
        save(state)
        print(f"SIGTERM: checkpointed at epoch {state['epoch']}", flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    rng = random.Random(SEED + state["epoch"])
    while state["epoch"] < EPOCHS:
        w, b = state["w"], state["b"]
        rng.shuffle(train)
        loss = 0.0
        for x, y in train:
            z = sum(wi * xi for wi, xi in zip(w, x, strict=False)) + b
            p = 1 / (1 + math.exp(-max(min(z, 30), -30)))
            loss -= math.log(max(p if y else 1 - p, 1e-12))
            g = p - y
            for i in range(FEATURES):
                w[i] -= LR * g * x[i] / 10
            b -= LR * g / 10
        correct = sum((sum(wi * xi for wi, xi in zip(w, x, strict=False)) + b > 0) == bool(y) for x, y in test)
        state = {"epoch": state["epoch"] + 1, "w": w, "b": b}
        metrics = {"loss": loss / len(train), "accuracy": correct / len(test)}
        incl.log(metrics, step=state["epoch"])
        print(f"epoch {state['epoch']:3d}  loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.3f}",
              flush=True)
        save(state)
        time.sleep(float(os.environ.get("EPOCH_PAUSE", "0.1")))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").write_text(json.dumps({"w": state["w"], "b": state["b"], "epochs": EPOCHS}))
    print(f"wrote {out_dir / 'model.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
