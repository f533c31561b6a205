"""The pipeline entry (`virnucpro`): no weights, only the calls it makes to the entries
beside it."""

from __future__ import annotations

import json
from pathlib import Path

from virnucpro_triton import repository as repo
from virnucpro_triton.export.verify import make_readable


def export_pipeline(repository: Path) -> Path:
    """The pipeline entry, told the max_batch_size of each entry it calls as their configs beside
    it declare (an entry not there yet: its spec's), so that it splits its calls to fit them.
    The classifiers there are the chunk sizes it serves."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def max_batch_size(name: str) -> int:
        path = repository / name / "config.pbtxt"
        if not path.is_file():
            return repo.spec_of(name).max_batch_size
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).max_batch_size

    present = repo.classifier_sizes(repository)
    names = [repo.DNABERT_S, repo.ESM2, *map(repo.classifier_name, present)]
    calls = {name: max_batch_size(name) for name in names}
    config = repo.entry_config(repo.spec_of(repo.PIPELINE), {}, {repo.CALLS: json.dumps(calls)})
    entry = repo.write_entry(repository, config)
    make_readable(entry)
    return entry
