"""`gpt2-serve train`: fine-tune or train a GPT-2 on your own text and write a directory the server loads.

    spec.py       the run's settings (TrainSpec) and the one error type bad input raises (TrainError)
    data.py       text/JSONL files -> documents -> tokens (EOS between documents) -> packed blocks, split
    model.py      the starting model: a pretrained GPT-2 (--from) or a new one (--config / size flags)
    callbacks.py  progress bar, JSON-lines metrics, time budget, first-step gradient dump
    train.py      the Hugging Face Trainer run, final evaluation, the output directory
    card.py       the model card (README.md) and summary.json;  plot.py  the loss plot (loss.png)
    cli.py        the typer command

The heavy libraries (torch, transformers, datasets) are imported only when a run starts, so the
`gpt2-serve` command stays quick to start for everything else.
"""
