"""The commands: each joins the readers of its input (fasta.py, records.py), the clients that
talk to the servers (client/) and the writers of its result files (results/), so that none of
those needs another. cli.py parses the options and calls them; nothing below them does
(tests/test_layout.py holds the layers).
"""
