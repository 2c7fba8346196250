"""Everything that reads: request and result types and their validation, semantic, keyword and
hybrid search, composed queries, near-duplicates, and batching of concurrent queries."""
