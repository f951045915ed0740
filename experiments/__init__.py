"""Studies that measure what the library's choices buy and write a result page: one folder each, run from the
repository root as ``python -m experiments.<name>.run`` (``--help`` for its options).

Each folder holds its script (``run.py``), its result page (``README.md``, with the command, commit, machine and
date it was written by), its plots and its recorded data. Runs resume from the ledger in their run folder
(``ledger.py``). The library never reads anything from here.
"""
