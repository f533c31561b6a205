"""Malformed module records in a pickled checkpoint are refused in one line."""

from __future__ import annotations

import copyreg
import re
import subprocess
import sys

import pytest
import torch
from fake_checkpoints import _class_in_main

from virnucpro_triton.export.checkpoints import CheckpointError, load_classifier


class _MalformedModule:
    """Pickles as a `__main__.MLPClassifier` module record whose attribute dict is `state`."""

    def __init__(self, state: object) -> None:
        self.state = state

    def __reduce_ex__(self, protocol: int) -> tuple:
        record = (copyreg.__newobj__, (type(self),))
        return record if self.state is None else (*record, self.state)


_MalformedModule.__module__ = "__main__"
_MalformedModule.__name__ = _MalformedModule.__qualname__ = "MLPClassifier"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (None, "no attribute dict"),
        ([1, 2], "no attribute dict"),
        ({"_parameters": [1, 2]}, "_parameters is not a dict"),
        ({"_modules": "bn1"}, "_modules is not a dict"),
        ({"_parameters": {"weight": "zeros"}}, "weight is a str, not a tensor"),
        ({"_buffers": {1: None}}, "_buffers is not a dict"),
    ],
)
def test_malformed_module_record_is_refused_in_one_line(tmp_path, state, message):
    path = tmp_path / "300_model.pth"
    with _class_in_main(_MalformedModule):
        torch.save(_MalformedModule(state), path)
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        load_classifier(path)
    assert str(refused.value).startswith(f"{path}: malformed module record")
    # And the CLI: one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "virnucpro_triton.cli", "export", "--out", str(tmp_path / "r")]
        + ["--classifier-300", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr
