"""Where the served entries' weights come from, as their configs say: for run.json and the
end-of-run summary."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tritonclient.utils import InferenceServerException

from virnucpro_triton.client import addresses
from virnucpro_triton.client.access import Channels
from virnucpro_triton.repository import (
    BATCH_INVARIANT,
    FP8_VERIFIED,
    PROVENANCE,
    provenance_values,
)

_log = logging.getLogger(__name__)
_CHANNEL = [("grpc.max_receive_message_length", 16 << 20)]  # a model config is a few kB


def provenance(url: str, names: Iterable[str], channels: Channels) -> dict[str, dict[str, Any]]:
    """Where each entry's weights came from, as its config parameters say (export writes
    repository.PROVENANCE, esm2's fp8 and fp8_verified, and whether it is batch-invariant),
    each in its JSON type."""
    found = {}
    with channels.client(url, addresses.parse(url).host, _CHANNEL) as client:
        for name in names:
            config = client.get_model_config(name, as_json=True, client_timeout=30)["config"]
            parameters = config.get("parameters", {})
            found[name] = provenance_values(
                {
                    key: parameters[key].get("string_value", "")
                    for key in (*PROVENANCE, "fp8", FP8_VERIFIED, BATCH_INVARIANT)
                    if key in parameters
                }
            )
    return found


def models(
    urls: Iterable[str], names: Iterable[str], channels: Channels
) -> dict[str, dict[str, Any]]:
    """The provenance of `names` on the first server; a warning when another one serves other
    models (results then mix them). `channels`: the run's token and TLS."""
    names = list(names)
    urls = list(urls)
    if not urls:  # an address file gone at the end of the run: its server is restarting
        _log.warning("could not read the models' provenance: no server address now")
        return {}
    first, *others = urls
    try:
        found = provenance(first, names, channels)
        for url in others:
            if provenance(url, names, channels) != found:
                _log.warning("%s serves other models than %s: results mix them", url, first)
    except InferenceServerException as error:  # the run is done: say so, do not fail it
        _log.warning("could not read the models' provenance: %s", error.message())
        return {}
    return found
