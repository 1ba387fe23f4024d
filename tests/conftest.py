"""Suite-wide test hygiene."""
import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """CLIs called in-process configure the root logger; undo it after each test.

    A handler left behind would keep writing to the previous test's captured
    (and by then closed) stream, and `logging.basicConfig` in the next CLI
    would see a configured root and add nothing.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: the test machine is shared, and
    model-sized work oversubscribes it otherwise."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
