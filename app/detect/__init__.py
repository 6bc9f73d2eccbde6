"""Telling machine-written from human text: how well a score separates the two (separation.py:
AUROC, ROC, the threshold at a false-positive rate) and `gpt2-serve calibrate` on /v1/score's
statistics (calibrate.py); the judge, features from the model's per-token scores (features.py) in
a calibrated linear model saved as JSON and run with numpy (judge.py), and the command that trains
it, `gpt2-serve train-detector` (cli.py, with data.py, train.py, pipeline.py, report.py,
limits.py). The commands reach the server through the client the command line hands them; nothing
here imports the app. docs/scoring.md explains how to calibrate, train a judge and read its verdict."""
