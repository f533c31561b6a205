"""Local file work: the files runs write and read back, in VirNucPro's formats and ours.

Nothing here talks to a server (that is `client/`): the per-frame table and the chunk verdicts,
the per-sequence summary and its weighted verdicts (evidence), virus.fna, run.json, the resume
journal, the HTML report and `preprocess`'s intermediate FASTA files.
"""
