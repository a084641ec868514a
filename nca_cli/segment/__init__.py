"""``nca segment``: inputs to masks, one pass (or exact tiles), with metadata."""
