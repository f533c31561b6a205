"""The commands: each joins the readers of its input (fasta.py, records.py), the clients that
talk to the servers (client/) and the writers of its result files (results/), so that none of
those needs another. Only cli.py, which parses the options, calls them.
"""
