"""Every Python entry has a bounded queue."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo


def test_python_entries_have_bounded_queues(tiny_repository):
    for config_path in tiny_repository.glob("*/config.pbtxt"):
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size == repo.MAX_QUEUE_SIZE, config.name
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
        assert policy.default_timeout_microseconds == repo.QUEUE_TIMEOUT_US
