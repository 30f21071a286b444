"""Training data: reading and validation, the Arrow cache, the example order, per-rank batches, prefetch.

Formats: the documented jsonl of each kind and the field's distributed ones (`formats`, docs/formats.md):
  IR (Tevatron): {"query_id": str, "query": str, "positive_passages": [{"docid", "title", "text"}],
                  "negative_passages": [...]}
  parallel:      {"en": str, "text": str, "lang": str}   (text = the translation of en into lang)
  monolingual:   {"text": str, "lang": str}
Records are validated once while the Arrow cache is built (`cache`: once per file, in parallel,
memory-mapped, so corpora larger than RAM are fine); a bad record stops with file, line and field, or
is skipped and counted (`read`). The epoch order is a keyed permutation computed per index, or draws
by language (`order`); `batches` turns a step's indices into tokenised groups, the next steps' by a
background thread (`prefetch`).
"""
