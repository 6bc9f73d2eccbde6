"""Telling machine-written from human text. separation.py: AUROC, ROC and the threshold at a
false-positive rate (numpy); calibrate.py: `gpt2-serve calibrate` on /v1/score's statistics; the
judge: features.py (from the per-token scores), judge.py (a calibrated linear model, JSON, numpy)
and `gpt2-serve train-detector` (cli.py with data.py, train.py, pipeline.py, report.py, limits.py).
The commands reach a server through the client app/cli.py hands them: nothing here imports the app.
docs/scoring.md explains how to calibrate, train a judge and read its verdict."""
