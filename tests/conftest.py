import os

import pytest
import torch

# Never touch the real ~/.demystify, never wait on the hub, keep CPU use predictable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMYSTIFY_PROGRESS", str(tmp_path / "progress.json"))
    yield tmp_path / "progress.json"


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after): timings and float sums as in CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
