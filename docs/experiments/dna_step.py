"""Issue 17: DNABERT-S on fresh frames. make bench's models-alone run (docs/bench-h200-512.json)
found it 24% of the two models' time on 1,024-frame sets, where lever2 (the same 3,000 frames
over and over) found 4.7%.

DNABERT-S 117M (random weights, bf16), the entry's DnaEmbedder: compiled and warmed up as the
entry does, on 8 sets of 1,024 fresh frames at 300 bp, then the same sets again; per set the
seconds of tokenizing, the seconds of the whole call and the graphs dynamo compiled meanwhile.
Variants: eager; compiled; compiled with batches padded to a multiple of 16 tokens.
Run on a CUDA GPU: python docs/experiments/dna_step.py [out.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from gaps import graphs  # beside this file

from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import make_workload
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer
from virnucpro_triton.models.esm2 import pad_batch
from virnucpro_triton.sequence_embedders import DnaEmbedder

DEVICE = torch.device("cuda")


class Multiple16(DnaEmbedder):
    def _embed_batch(self, tokens, pinned):
        width = -(-max(map(len, tokens)) // 16) * 16
        ids = pad_batch([t + [self.pad_id] * (width - len(t)) for t in tokens], self.pad_id)
        ids = ids.pin_memory().to(self.backend.device, non_blocking=True)
        return self.backend.embed(ids, ids != self.pad_id)


def main() -> None:
    frames = make_workload(Path("/tmp/dna_frames.fa"), 9_000, 300, seed=11)
    texts = [f.nucleotide for f in frames]
    sets = [texts[i : i + 1024] for i in range(0, 8 * 1024, 1024)]
    tokenizer = Path("/tmp/dna_tokenizer.json")
    build_dna_bpe_tokenizer(DnabertConfig().vocab_size).save(str(tokenizer))
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = DnabertS(DnabertConfig()).eval().to(torch.bfloat16)
    results: dict = {"device": torch.cuda.get_device_name(DEVICE)}
    for name, cls, compiled in (
        ("eager", DnaEmbedder, False),
        ("compiled", DnaEmbedder, True),
        ("compiled, multiple of 16", Multiple16, True),
    ):
        torch._dynamo.reset()
        embed = cls(TorchBackend(model, DEVICE, compiled=compiled), tokenizer)
        embed.warm_up()
        passes = []
        for _ in range(2):
            rows = []
            for part in sets:
                before = graphs()
                start = time.perf_counter()
                embed.tokenize(part)
                tokenize = time.perf_counter() - start
                torch.cuda.synchronize()
                start = time.perf_counter()
                embed(part)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "frames_per_s": round(len(part) / seconds),
                        "tokenize_ms": round(1000 * tokenize, 1),
                        "new_graphs": graphs() - before,
                    }
                )
            passes.append(rows)
        results[name] = {
            "first_pass": passes[0],
            "second_pass": passes[1],
            "medians": [statistics.median(r["frames_per_s"] for r in p) for p in passes],
        }
        print(name, json.dumps(results[name]), flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
