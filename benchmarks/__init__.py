"""`make bench`: the served pipeline against in-process ways of running the same models.

Not part of the wheel. It uses the package's public modules (repository, commands.predict,
commands.embed, backends, sequence_embedders, export, models, results.frame_table, sequence, server,
serving.embedding_cache) and the tests' helpers for inputs and certificates (tests/inputs.py,
tests/certificates.py, tests/repository_edits.py). By what they hold:
- bench.py: the command (`python -m benchmarks.bench`) and the order of the measurements;
- workload.py: the FASTA files measured (contigs, reads, copies of reads);
- random_models.py: full-size (or --tiny) models with random weights, written as a repository;
- virnucpro_own.py: VirNucPro's own way (fair-esm ESM-2 and DNABERT-S in fp32), the baseline;
- in_process.py: the models resident in this process (the reference tools' way, the entries'
  embedders alone);
- served.py: FASTA -> client -> embedded tritonserver -> result files, and its variants
  (one GPU, copies of reads with the embedding cache off and on, FP8);
- invariance.py: batch invariance (rows that move between runs, the first module that
  computes a row differently in a batch) in the default and the batch-invariant mode;
- report.py: the lines and the table printed;
- door.py: what access tokens and TLS cost at the front door (`python -m benchmarks.door`);
- device.sh: the steps run on a lent GPU machine.
"""
