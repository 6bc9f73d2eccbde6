"""The judge of human vs machine text: features from the model's per-token scores (features.py),
a calibrated linear model saved as JSON and run with numpy (judge.py), and the command that
trains it, `gpt2-serve train-detector` (cli.py, with data.py, train.py, pipeline.py, report.py,
limits.py). docs/scoring.md explains how to train one and read its verdict."""
