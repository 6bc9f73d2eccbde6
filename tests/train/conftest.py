"""Fixtures for `gpt2-serve train`: a small English corpus, and the command run as a real process
(alone or under torchrun), with the datasets cache in a temporary directory."""

import functools
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A tiny GPT-2 trained from scratch: 2 layers, 64 dims, a 32-token context (the vocabulary is
# GPT-2's 50,257 tokens, which is most of the compute)
TINY = ["--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--context", "32"]

SUBJECTS = ["the old man", "a young woman", "the farmer", "my brother", "the teacher", "a small dog", "the king",
            "our neighbour", "the doctor", "a tired soldier"]
VERBS = ["walked to", "looked at", "talked about", "dreamed of", "wrote to", "waited for", "laughed at",
         "thought about", "ran towards", "asked about"]
OBJECTS = ["the river", "the market", "a letter", "the garden", "the village", "an open window", "the sea",
           "the mountains", "a quiet house", "the city"]
ENDINGS = ["in the morning", "after dinner", "before the rain", "at night", "on Sunday", "every day",
           "without a word", "with great care"]


def english(seed: int, sentences: int) -> str:
    """Simple English sentences from a small grammar: learnable within a few steps."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
        lines.append(s[0].upper() + s[1:])
    return " ".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A directory of two documents (~12,000 GPT-2 tokens together)."""
    path = tmp_path_factory.mktemp("corpus")
    (path / "one.txt").write_text(english(1, 700))
    (path / "two.txt").write_text(english(2, 700))
    return path


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("datasets-cache")


@functools.cache
def private_network() -> list[str]:
    """A command prefix that runs a command in its own network namespace with only loopback, where
    this machine allows it (root, util-linux, iproute2). torchrun's rendezvous store listens on every
    interface of its namespace (torch's TCPStore cannot bind one address), so it is isolated there."""
    prefix = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def train_command(datasets_cache):
    """train_command(*args, processes=1, env={}) -> (argv, env) of `gpt2-serve train args`,
    under torchrun (gloo, CPU, loopback only) when processes > 1."""

    def command(*args: str, processes: int = 1, env: dict | None = None) -> tuple[list[str], dict]:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_DATASETS_CACHE": str(datasets_cache), "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": str(ROOT), **(env or {})}
        argv = [sys.executable, "-m", "app.cli", "train", *map(str, args)]
        if processes > 1:
            full_env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
            argv = [*private_network(), sys.executable, "-m", "torch.distributed.run",
                    f"--nproc_per_node={processes}", "--nnodes=1", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", "-m", "app.cli", "train", *map(str, args)]
        return argv, full_env

    return command


@pytest.fixture(scope="session")
def run_train(train_command):
    """run_train(*args, processes=1, env={}) -> CompletedProcess (text, output captured)."""

    def run(*args: str, processes: int = 1, env: dict | None = None, timeout: float = 180):
        argv, full_env = train_command(*args, processes=processes, env=env)
        return subprocess.run(argv, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    return run
