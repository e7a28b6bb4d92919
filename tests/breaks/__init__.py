"""Every documented break, reproduced: ``python -m tests.breaks``.

Each break in :mod:`tests.breaks.catalogue` is a small edit of the package (the
text it replaces and the text it puts instead), the backends it is tried on and
the tests that must catch it. The command copies the repository to a scratch
folder, applies one break at a time, runs those tests there, and says which
failed. A break whose tests all pass is a guarantee nothing guards.

The edits are exact: one that no longer matches the source (the code moved on)
fails ``tests/guarantees/test_breaks.py`` in the ordinary suite, so the catalogue cannot
rot unnoticed.
"""
