"""Where an index lives: the SQLite catalog (numbered migrations), the index directory (manifest,
lock, generations, the read and commit paths), keyword search tables, the integrity check and
disk space estimates."""
