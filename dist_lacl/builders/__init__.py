"""`dist-lacl data ...`: builders that turn text installed from Debian packages into training and
evaluation files in the project's formats (see `dist_lacl.data`).

One module per source: `python_docs` (English IR pairs), `gettext_pairs` (parallel pairs),
`manpages` (monolingual sentences), `debian_faq` (a zero-shot evaluation set); `cli` registers the
commands. Every builder is deterministic (same inputs and settings give byte-identical files),
writes atomically, prints a table of counts per language and returns the counts.
"""
