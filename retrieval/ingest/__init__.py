"""Everything that writes: walking and decoding files, texts, product catalogs, captions, and the
one write path (`indexer.Indexer`) that every writer goes through."""
